# The board's MQTT session, on micropython-lib's umqtt.simple (vendored in lib/umqtt/).
#
# umqtt.simple blocks on its socket without a limit and never reconnects; around it:
#   * its socket comes from `_Sockets` (installed as the module's `socket`), whose "blocking"
#     means "time out after io_timeout_s", so a dead link raises within that time wherever
#     umqtt waits (CONNACK, SUBACK, PUBACK, the rest of a packet);
#   * any exception from the client ends the session (a half-read packet leaves the stream out
#     of step, so nothing is retried on it); a new one is tried after a jittered exponential
#     backoff, reset once a session lasted stable_after_s. The session is persistent
#     (clean_session off), so the broker keeps inbox messages while the board is away;
#   * keepalive: a PINGREQ when nothing was sent for half the keepalive; no byte received for
#     keepalive + io_timeout means the link is dead;
#   * received messages are queued by umqtt's callback and handed on by wait(), never from
#     inside a publish (a handler that publishes would recurse into umqtt's PUBACK loop);
#   * packet ids wrap at 65535 (umqtt.simple would overflow its 16-bit field).
import random
import select
import time

try:
    import usocket
except ImportError:  # ports that dropped the u-prefixed aliases
    import socket as usocket

from umqtt import simple

from edge_agent.core import protocol


class _TimedSocket:
    """What umqtt.simple uses as its socket: blocking operations time out; tracks received."""

    def __init__(self, timeout_s):
        self.sock = usocket.socket()
        self.timeout_s = timeout_s
        self.rx_ms = time.ticks_ms()
        self.sock.settimeout(timeout_s)

    def connect(self, addr):
        self.sock.connect(addr)

    def setblocking(self, flag):
        self.sock.settimeout(self.timeout_s if flag else 0)

    def read(self, n):
        data = self.sock.read(n)
        if data:
            self.rx_ms = time.ticks_ms()
        elif data is not None and n:
            raise OSError("connection closed")
        return data

    def write(self, *args):
        return self.sock.write(*args)

    def close(self):
        self.sock.close()


class _Sockets:
    def __init__(self, timeout_s):
        self.timeout_s = timeout_s

    def socket(self):
        return _TimedSocket(self.timeout_s)

    def getaddrinfo(self, host, port):
        return usocket.getaddrinfo(host, port)


class Backoff:
    """Exponential backoff with equal jitter: uniform in [d/2, d]."""

    def __init__(self, initial_s, max_s):
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0

    def next(self):
        delay = min(self.max_s, self.initial_s * (1 << min(self.failures, 16)))
        self.failures += 1
        return delay * (0.5 + 0.5 * random.random())


def parse_url(url):
    """mqtt://host[:port] -> (host, port)"""
    if not url.startswith("mqtt://"):
        raise ValueError("gateway URL must look like mqtt://host:port, got %r" % url)
    host, _, port = url[7:].rstrip("/").partition(":")
    return host, int(port) if port else 1883


class Link:
    def __init__(self, cfg, stats, *, device_id, password, url, clock):
        self.cfg = cfg
        self.device_id = device_id
        self.password = password
        self.host, self.port = parse_url(url)
        self.clock = clock  # monotonic seconds
        self.stats = stats
        self.client = None
        self.on_connect = None  # fn(): after each (re)connect: state, re-send results
        self.on_message = None  # fn(payload): one inbox message
        self.will = None  # the last will's payload (statedoc.offline())
        self._queue = []
        self._backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
        self._retry_at = 0
        self._connected_at = None
        self._sent_at = 0
        self._poller = None

    def topic(self, kind):
        return protocol.device_topic(self.device_id, kind)

    @property
    def connected(self):
        return self.client is not None

    # -- the session -----------------------------------------------------------------------------

    def ensure(self):
        """Connect if disconnected and the backoff allows; True when connected."""
        if self.client is not None:
            return True
        if self.clock() < self._retry_at:
            return False
        simple.socket = _Sockets(self.cfg.io_timeout_s)
        client = simple.MQTTClient(self.device_id, self.host, self.port, user=self.device_id,
                                   password=self.password, keepalive=self.cfg.keepalive_s)
        client.set_last_will(self.topic("state"), self.will, retain=True, qos=1)
        client.set_callback(self._received)
        try:
            client.connect(clean_session=False)
            client.subscribe(protocol.inbox_topic(self.device_id), qos=1)
        except Exception as e:
            self._close(client)
            self._failed("connect", e)
            return False
        self.client = client
        self._poller = select.poll()
        self._poller.register(client.sock.sock, select.POLLIN)
        self._connected_at = self._sent_at = self.clock()
        self.stats.bump("connects")
        print("edge: connected to %s:%d" % (self.host, self.port))
        if self.on_connect is not None:
            self.on_connect()
        return self.client is not None

    def _failed(self, where, exc):
        self.stats.bump("connection_errors")
        now = self.clock()
        if self._connected_at is not None and now - self._connected_at >= self.cfg.stable_after_s:
            self._backoff.failures = 0
        self._connected_at = None
        delay = self._backoff.next()
        self._retry_at = now + delay
        print("edge: link lost (%s: %r); retry in %d ms" % (where, exc, int(delay * 1000)))

    def _close(self, client):
        try:
            client.sock.close()
        except Exception:  # already gone
            pass

    def drop(self, where, exc):
        """End the session after an error; the next ensure() reconnects (after the backoff)."""
        if self.client is not None:
            self._close(self.client)
            self.client = None
            self._poller = None
            self._failed(where, exc)

    def close(self, goodbye):
        """Clean stop: the retained offline state, then DISCONNECT (no last will)."""
        if self.client is None:
            return
        try:
            self.client.publish(self.topic("state"), goodbye, True, 1)
            self.client.disconnect()
        except Exception:  # leaving anyway: the last will says offline
            self._close(self.client)
        self.client = None

    def publish(self, kind, payload, retain=False):
        """QoS 1 on the device's `kind` topic; False when offline or the link failed."""
        if not self.ensure():
            return False
        client = self.client
        if client.pid >= 65535:
            client.pid = 0
        try:
            client.publish(self.topic(kind), payload, retain, 1)
        except Exception as e:
            self.drop("publish", e)
            return False
        self._sent_at = self.clock()
        return True

    # -- receiving -------------------------------------------------------------------------------

    def _received(self, topic, msg):
        if len(self._queue) >= self.cfg.max_inbox_queue:
            self.stats.bump("inbox_dropped:queue_full")
            return
        self._queue.append(msg)

    def _keepalive(self):
        client, now = self.client, self.clock()
        idle_rx = time.ticks_diff(time.ticks_ms(), client.sock.rx_ms) / 1000
        if idle_rx > self.cfg.keepalive_s + self.cfg.io_timeout_s:
            self.drop("keepalive", "nothing received for %d s" % idle_rx)
            return
        if now - self._sent_at >= self.cfg.keepalive_s / 2:
            try:
                client.ping()
            except Exception as e:
                self.drop("ping", e)
                return
            self._sent_at = now

    def _pump(self, timeout_ms):
        """Wait up to timeout_ms for the socket, then read what arrived."""
        if not self.ensure():
            return False
        self._keepalive()
        if self.client is None:
            return False
        if not self._poller.poll(max(0, timeout_ms)):
            return True
        try:
            self.client.check_msg()  # one packet; poll() says at once if more are waiting
        except Exception as e:
            self.drop("receive", e)
        return self.client is not None

    def wait(self, seconds, until=None):
        """Serve the link (keepalive, reconnects, inbox) for up to `seconds`, returning early
        once until() holds (checked after every message). wait(0) serves it once, without
        blocking. Returns whether until() held."""
        end = self.clock() + seconds
        while True:
            left = end - self.clock()
            online = self._pump(int(max(0, min(left, 1)) * 1000))
            while self._queue:
                self.on_message(self._queue.pop(0))
            if until is not None and until():
                return True
            if left <= 0:
                return False
            if not online:
                # Offline: nap until the reconnect attempt or the end, whichever is first.
                nap = min(left, max(0, self._retry_at - self.clock()), 1)
                time.sleep_ms(max(1, int(nap * 1000)))  # nothing to wait on while offline
