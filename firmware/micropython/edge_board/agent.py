# The board's work loop: the CPython agent's behaviour (docs/AGENT.md "The work loop") in one
# thread and a small heap. Ask the governor; when it says run: pull, check every lease before
# anything of it runs, fetch its blobs, run the kernel's Python twin in chunks (the governor is
# asked again between chunks; stop checkpoints the task, pause holds it), seal the result with
# the device key, store it BEFORE publishing, re-send it after every reconnect until a signed
# ack for it is stored. Acks are claimed and settlement proofs checked by edge_board/claims.py.
import gc
import sys
import time

from edge_agent.core import blobs, ed25519, leases, protocol, statedoc
from edge_agent.core import kernels as registry
from edge_agent.core.governor import PAUSE, RUN, STOP, Governor, Settings
from edge_board import device
from edge_board.claims import Claims
from edge_board.inbox import FetchError, Inbox, hex8, retry_on_memory
from edge_board.link import Link
from edge_board.statereport import StateReport
from edge_board.store import EnrolmentError

DECIDE_EVERY_S = 5  # the governor keeps a sample per decision: bounded by its 180 s window


class Stats:
    def __init__(self):
        self.counts = {}
        self.heap_max = 0  # the largest live heap (after a collection) at the sample points

    def bump(self, key, n=1):
        self.counts[key] = self.counts.get(key, 0) + n

    def heap(self):
        gc.collect()
        self.heap_max = max(self.heap_max, gc.mem_alloc())


class Task:
    """A verified lease and, once started, its progress."""

    def __init__(self, lease, sealed, state=None, started=0):
        self.lease = lease
        self.sealed = sealed
        self.state = state
        self.started = started

    @property
    def lease_id(self):
        return self.lease["lease"]

    @property
    def deadline(self):
        return self.lease["deadline"]


def release_kernel(name):
    """Forget a kernel's module between tasks (the next task imports it again, in a few ms): on
    the unix port its bytecode is heap, and a twin the next task does not run is dead weight
    while that task signs."""
    sys.modules.pop(registry.__name__ + "." + name, None)
    try:  # not dir(registry): it looks up every name, REGISTRY too, which imports every kernel
        delattr(registry, name)
    except (AttributeError, KeyError):  # not imported (MicroPython raises KeyError)
        pass


def next_chunk(done, elapsed_s, target_s):
    """Units for the next chunk from the last one's speed; grows at most 4x per chunk."""
    if elapsed_s <= 0:
        return max(1, done * 4)
    return max(1, min(int(done / elapsed_s * target_s), done * 4))


class Agent:
    def __init__(self, cfg, hal, store):
        self.cfg = cfg
        self.hal = hal
        self.store = store
        self.seed = store.load_seed()
        self.device_id = protocol.device_id(ed25519.publickey(self.seed))
        creds = store.load_credentials()
        if creds["username"] != self.device_id:
            raise EnrolmentError("credentials.json is for %s, device.key is %s"
                                 % (creds["username"], self.device_id))
        self.gateway_pub = store.load_gateway_key()
        self.stats = Stats()
        self.clock = device.Monotonic()
        self.link = Link(cfg, self.stats, device_id=self.device_id, password=creds["password"],
                         url=cfg.gateway_url or creds["gateway_url"], clock=self.clock.seconds)
        self.link.will = statedoc.offline()
        self.link.on_connect = self._on_connect
        self.inbox = Inbox(self.link, store, self.stats, cfg, device_id=self.device_id,
                           gateway_pub=self.gateway_pub, on_leases=self._accept_leases)
        self.inbox.on_ack = self._on_ack
        self.claims = Claims(self.link, store, self.stats, cfg, device_id=self.device_id,
                             gateway_pub=self.gateway_pub, sign=self.sign,
                             clock=self.clock.seconds, wake=self._wake_up)
        self.inbox.handlers.update(self.claims.handlers)
        self.governor = Governor(Settings(**cfg.governor))
        self.report = StateReport()
        self.kernels = sorted(cfg.kernels or registry.NAMES)
        self.pending = []  # verified leases not started yet
        self.held = []  # started, stopped by the governor (checkpointed)
        self.tasks_done = 0
        self.task_ms = []  # wall time of each task, compute start to stored result
        self._idle = False
        self._wake = False
        self._decision = None
        self._decided_at = None

    def sign(self, message):
        return ed25519.sign(self.seed, message)

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self):
        """Work until the task limit or, with exit_when_idle, nothing is left; Ctrl-C stops
        cleanly (the running task is checkpointed)."""
        print("edge: device %s, kernels %s" % (self.device_id, ",".join(self.kernels)))
        self._resume_checkpoints()
        try:
            while not self._finished():
                self.claims.tick(idle=not (self.pending or self.held or self.store.unacked()))
                decision = self._decide()
                if decision.action != RUN:
                    if decision.action == STOP:
                        self._note_idle()
                    self._idle_for(self.cfg.recheck_s)
                    continue
                task = self._next_task()
                if task is None:
                    self._pull()
                else:
                    self._run_task(task)
        finally:
            self.link.close(statedoc.offline())
        return self.stats

    def _finished(self):
        if self.store.unacked() or not self.claims.done():
            return False
        return self._at_task_limit() or (self._idle and not self.pending and not self.held)

    def _at_task_limit(self):
        return self.cfg.max_tasks is not None and self.tasks_done >= self.cfg.max_tasks

    def _note_idle(self):
        if self.cfg.exit_when_idle and not self.pending and not self.held:
            self._idle = True

    def _wake_up(self):
        self._wake = True

    def _on_ack(self, ack):
        self.claims.note_ack()
        self._wake = True

    def _idle_for(self, seconds):
        """Serve the link until something happens (a lease, an ack) or `seconds` pass."""
        self._wake = False
        self.link.wait(seconds, lambda: self._wake)

    # -- the link --------------------------------------------------------------------------------

    def _on_connect(self):
        self.report.force()
        self._wake = True
        self.claims.resend_all()
        for lease_id in self.store.unacked():
            sealed = self.store.outbox_entry(lease_id)
            if sealed is not None and self.link.publish("result", sealed):
                self.stats.bump("results_resent")

    def _send_state(self):
        report = self.report
        if not report.due or report.fields is None:
            return
        now = self.clock.seconds()
        if report.sent_at is not None and now - report.sent_at < self.cfg.state_every_s:
            return
        doc = report.document(self.store.next_number("state_seq"), device.unix_time())
        if self.link.publish("state", doc, retain=True):
            report.mark_sent(now)
            self.stats.bump("states_sent")

    # -- the governor ----------------------------------------------------------------------------

    def _decide(self):
        now = self.clock.seconds()
        if self._decision is None or now - self._decided_at >= DECIDE_EVERY_S:
            reading = self.hal.read()
            minute = device.minute_of_day(self.cfg.utc_offset_min)
            decision = self.governor.decide(reading, now, minute)
            if self._decision is None or self._decision.action != decision.action:
                self.stats.bump("decision:" + decision.action)
                print("edge: %s (%s)" % (decision.action, decision.text))
            self._decision, self._decided_at = decision, now
            self.report.note(reading, decision)
        self._send_state()
        return self._decision

    # -- leases ----------------------------------------------------------------------------------

    def _accept_leases(self, items):
        now = device.unix_time()
        for item in items:
            try:
                lease = retry_on_memory(self._check_lease, item, now)
            except protocol.ProtocolError as e:
                self.stats.bump("lease_rejected:" + e.code)
                print("edge: lease rejected: %s" % e)
                continue
            if self._knows_lease(lease["lease"]):
                self.stats.bump("lease_duplicate")
                continue
            self.pending.append(Task(lease, item))
            self.stats.bump("leases_accepted")
        self._wake = True

    def _check_lease(self, sealed, now):
        return leases.check(sealed, self.gateway_pub, ed25519.verify, device_id=self.device_id,
                            now=now, kernels=self.kernels)

    def _knows_lease(self, lease_id):
        for t in self.pending + self.held:
            if t.lease_id == lease_id:
                return True
        return self.store.knows_lease(lease_id)

    def _next_task(self):
        return leases.next_live((self.held, self.pending), device.unix_time(),
                                lambda t: self._drop(t, "lease_expired"))

    def _drop(self, task, code):
        self.store.drop_checkpoint(task.lease_id)
        self.stats.bump("task_dropped:" + code)
        print("edge: dropped a lease: %s" % code)

    def _pull(self):
        cfg, link = self.cfg, self.link
        if self._at_task_limit() or len(self.store.unacked()) >= cfg.max_outbox:
            self._idle_for(cfg.recheck_s)  # wait for acks, not more work
            return
        if not link.ensure():
            link.wait(cfg.recheck_s, lambda: link.connected)
            return
        outcome = self.inbox.request_leases(self.kernels)
        if outcome == "leases":
            return
        if outcome == "no_work":
            self._note_idle()
            self._wake = False
            wait_s = self.inbox.retry_after_s
            if self.claims.waiting:
                wait_s = min(wait_s, self.cfg.claim_quiet_s)  # then claim what is left
            link.wait(wait_s, lambda: self._wake or self._finished())
            return
        self._idle_for(cfg.recheck_s)  # timeout, publish failure or disconnect

    # -- running a task --------------------------------------------------------------------------

    def _prepare(self, task):
        """(kernel, params, total units, state) with blobs in place, or None (dropped)."""
        lease = task.lease
        try:
            fetched = {}
            for digest in blobs.refs(lease["params"]):
                fetched[digest] = self.inbox.fetch_blob(digest)
            kernel = registry.get(lease["kernel"])
            params = kernel.validate(blobs.resolve(lease["params"], fetched, verify=False))
            del fetched
            total = kernel.work_units(params)
            state = kernel.start(params) if task.state is None else task.state
            units = state.get("units") if type(state) is dict else None
            if type(units) is not int or not 0 <= units <= total:
                raise registry.KernelError("checkpoint state does not belong to these params")
        except (registry.KernelError, blobs.BlobError, FetchError, MemoryError) as e:
            code = "blob_failed" if isinstance(e, FetchError) else "bad_params"
            print("edge: cannot run lease: %r" % e)
            self.stats.bump("lease_rejected:" + code)
            self._drop(task, code)
            return None
        return kernel, params, total, state

    def _run_task(self, task):
        prepared = self._prepare(task)
        if prepared is None:
            return
        kernel, params, total, state = prepared
        if task.started == 0:
            task.started = device.unix_time()
        print("edge: start %s %s %d units" % (hex8(task.lease["task"]), task.lease["kernel"],
                                              total))
        began = time.ticks_ms()
        done = self._compute(task, kernel, params, total, state)
        ms = time.ticks_diff(time.ticks_ms(), began)
        result = kernel.result(params, state) if done else None
        del kernel, prepared  # the twin is not needed to sign: let its module go first
        release_kernel(task.lease["kernel"])
        if done:
            retry_on_memory(self._finish, task, result, ms)

    def _compute(self, task, kernel, params, total, state):
        """Run chunks while the governor allows; False if the task was stopped or dropped."""
        cfg = self.cfg
        task.state = state
        self._checkpoint(task)
        last_checkpoint = self.clock.seconds()
        units = min(total, 4096)
        paused = False
        while state["units"] < total:
            if task.deadline <= device.unix_time():
                self._drop(task, "lease_expired")
                return False
            decision = self._decide()
            if decision.action == STOP:
                self._checkpoint(task)
                self.held.append(task)
                self.stats.bump("tasks_stopped")
                return False
            if decision.action == PAUSE:
                if not paused:
                    paused = True
                    self.stats.bump("tasks_paused")
                self._idle_for(cfg.recheck_s)
                continue
            paused = False
            start = time.ticks_ms()
            done = kernel.step(params, state, units)
            elapsed_s = time.ticks_diff(time.ticks_ms(), start) / 1000
            self.stats.bump("chunks")
            self.stats.heap()
            units = next_chunk(done, elapsed_s, cfg.chunk_ms / 1000)
            if self.clock.seconds() - last_checkpoint >= cfg.checkpoint_every_s:
                self._checkpoint(task)
                last_checkpoint = self.clock.seconds()
            idle_s = 0
            if decision.duty < 1.0 and state["units"] < total:
                idle_s = elapsed_s * (1.0 - decision.duty) / decision.duty  # the duty cycle
            self.link.wait(idle_s)  # keepalive and inbox between chunks
        return True

    def _checkpoint(self, task):
        self.store.save_checkpoint(task.lease_id, task.sealed, task.started, task.state)
        self.stats.bump("checkpoints")

    def _finish(self, task, result, ms):
        """Seal the result and store it durably (dropping the checkpoint) before any publish."""
        lease = task.lease
        body = protocol.message("result", lease=lease["lease"], task=lease["task"],
                                dev=self.device_id, kernel=lease["kernel"],
                                rhash=protocol.result_hash(result), units=lease["units"],
                                started=task.started, finished=device.unix_time())
        sealed = protocol.seal(body, self.sign, attachment=result)
        self.store.store_result(lease["lease"], sealed)
        self.tasks_done += 1
        self.task_ms.append(ms)
        self.stats.bump("results")
        self.stats.heap()
        print("edge: result %s %s %d units %d ms" % (hex8(lease["task"]), lease["kernel"],
                                                     lease["units"], ms))
        if self.link.publish("result", sealed):
            self.stats.bump("results_sent")

    # -- restart ---------------------------------------------------------------------------------

    def _resume_checkpoints(self):
        now = device.unix_time()
        for lease_id, sealed, started, state in self.store.checkpoints():
            try:
                lease = self._check_lease(sealed, now)
            except protocol.ProtocolError as e:
                self.store.drop_checkpoint(lease_id)
                self.stats.bump("checkpoint_dropped:" + e.code)
                continue
            self.held.append(Task(lease, sealed, state, started))
            self.stats.bump("checkpoints_resumed")
