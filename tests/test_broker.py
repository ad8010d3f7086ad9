"""The gateway's Mosquitto: credentials, ACL isolation, reload, persistence and supervision.

Everything runs against a real Mosquitto with real aiomqtt clients. Synchronisation is by message
arrival, reason codes and marker messages, never by sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from gateway.broker import Broker, BrokerEndpoint, BrokerError, probe_login
from gateway.passwords import (
    CredentialError,
    PasswordFile,
    hash_password,
    verify_password,
)
from tests.mqtt_fixtures import (
    RC_NO_MATCHING_SUBSCRIBERS,
    RC_NOT_AUTHORIZED,
    RC_SUCCESS,
    WAIT_S,
    messages_until,
    mqtt_client,
    new_device,
    new_token_account,
    next_message,
    publish_acked,
    topics,
)

ACCEPTED = (RC_SUCCESS, RC_NO_MATCHING_SUBSCRIBERS)
KINDS = ("state", "pull", "result", "claim", "blob")


def dev_topic(account: BrokerEndpoint, kind: str) -> str:
    return f"edge/v1/dev/{account.username}/{kind}"


def inbox(account: BrokerEndpoint) -> str:
    return f"edge/v1/gw/{account.username}/inbox"


def enrol_topic(account: BrokerEndpoint, leg: str) -> str:
    return f"edge/v1/enrol/{account.username}/{leg}"


# ---------------------------------------------------------------- password file and names


def test_our_hash_is_byte_identical_to_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    username, password = secrets.token_hex(16), "correct horse battery staple"
    subprocess.run(["mosquitto_passwd", "-c", "-b", path, username, password], check=True)
    line = path.read_text().strip()
    encoded = line.split(":", 1)[1]
    assert encoded.startswith("$7$101$")
    assert verify_password(password, encoded)
    assert not verify_password(password + "!", encoded)
    salt = base64.b64decode(encoded.split("$")[3])
    assert f"{username}:{hash_password(password, salt=salt)}" == line
    loaded = PasswordFile(path)
    assert username in loaded and loaded.verify(username, password)


@pytest.mark.parametrize(
    "username",
    [
        "gateway",  # the gateway account is not a client the API hands out
        "0123456789ABCDEF0123456789ABCDEF",  # upper case
        "0123456789abcdef0123456789abcde",  # 31 chars
        "0123456789abcdef0123456789abcdef0",  # 33 chars
        "0123456789abcdef/123456789abcdef",
        "0123456789abcdef+123456789abcdef",
        "0123456789abcdef#123456789abcdef",
        "tok-0123456789abcde",
        "tok-0123456789abcdeg",
        "",
    ],
)
def test_the_credential_api_refuses_names_that_could_escape_the_acl(
    mqtt_broker: Broker, username: str
) -> None:
    with pytest.raises(ValueError, match=r"username|gateway account"):
        mqtt_broker.add_client(username, "p" * 20)
    assert not mqtt_broker.has_client(username) or username == "gateway"


def test_passwords_are_bounded_and_a_bad_batch_changes_nothing(mqtt_broker: Broker) -> None:
    good, bad = secrets.token_hex(16), secrets.token_hex(16)
    for password in ("short", "x" * 129, "tab\tinside-a-long-password"):
        with pytest.raises(CredentialError):
            mqtt_broker.add_client(bad, password)
    with pytest.raises(CredentialError):
        mqtt_broker.add_clients([(good, "g" * 20), ("not-a-device", "g" * 20)])
    assert not mqtt_broker.has_client(good)
    assert not mqtt_broker.has_client(bad)


def test_five_thousand_devices_are_one_batch_and_one_reload(mqtt_broker: Broker) -> None:
    accounts = [(secrets.token_hex(16), secrets.token_hex(16)) for _ in range(5000)]
    started = time.perf_counter()
    mqtt_broker.add_clients(accounts)
    elapsed = time.perf_counter() - started
    username, password = accounts[-1]
    assert probe_login(mqtt_broker.endpoint(username, password)) == 0
    assert probe_login(mqtt_broker.endpoint(username, accounts[0][1])) == 5  # not authorised
    assert elapsed < 10, f"adding 5000 clients took {elapsed:.2f} s"


def test_files_are_private_and_the_url_parses(mqtt_broker: Broker) -> None:
    for name in ("passwd", "acl", "mosquitto.conf", "gateway.password"):
        assert (mqtt_broker.dir / name).stat().st_mode & 0o077 == 0, name
    config = mqtt_broker.config_path.read_text()
    assert "allow_anonymous false" in config
    endpoint = BrokerEndpoint.from_url(mqtt_broker.url, "u", "p")
    assert (endpoint.host, endpoint.port) == (mqtt_broker.host, mqtt_broker.port)
    assert BrokerEndpoint.from_url("mqtt://broker.example", "u", "p").port == 1883
    with pytest.raises(ValueError, match="mqtt://"):
        BrokerEndpoint.from_url("http://x:1", "u", "p")


# ---------------------------------------------------------------- authentication


def test_anonymous_and_wrong_password_are_refused(mqtt_broker: Broker) -> None:
    device = new_device(mqtt_broker)
    wrong = BrokerEndpoint(device.host, device.port, device.username, device.password + "x")

    async def main() -> None:
        anonymous = aiomqtt.Client(
            mqtt_broker.host, mqtt_broker.port, protocol=aiomqtt.ProtocolVersion.V5
        )
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with anonymous:
                pass
        assert refused.value.rc == RC_NOT_AUTHORIZED
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with mqtt_client(wrong):
                pass
        assert refused.value.rc == RC_NOT_AUTHORIZED
        async with mqtt_client(device) as ok:
            assert await publish_acked(ok, dev_topic(device, "state"), b"up") in ACCEPTED

    asyncio.run(main())


# ---------------------------------------------------------------- device isolation


def test_device_publishes_its_own_topics_and_cannot_forge_another_device(
    mqtt_broker: Broker,
) -> None:
    a, b = new_device(mqtt_broker), new_device(mqtt_broker)

    async def main() -> None:
        async with (
            mqtt_client(mqtt_broker.gateway_endpoint()) as gateway,
            mqtt_client(a) as dev_a,
        ):
            await gateway.subscribe("edge/v1/#")
            for kind in KINDS:
                assert await publish_acked(dev_a, dev_topic(a, kind), kind) == RC_SUCCESS
            got = [await next_message(gateway) for _ in KINDS]
            assert topics(got) == [dev_topic(a, kind) for kind in KINDS]

            # Forgeries: B's device topics, any inbox (even its own), another account's enrolment.
            forged = [dev_topic(b, "result"), dev_topic(b, "state"), inbox(b), inbox(a)]
            forged.append("edge/v1/enrol/tok-0123456789abcdef/req")
            forged.append("edge/v1/other")
            for topic in forged:
                assert await publish_acked(dev_a, topic, b"forged") == RC_NOT_AUTHORIZED, topic
            marker = dev_topic(a, "pull")
            await publish_acked(dev_a, marker, b"marker")
            assert topics(await messages_until(gateway, marker)) == [marker]

    asyncio.run(main())


def test_device_reads_only_its_own_inbox_whatever_it_subscribes_to(mqtt_broker: Broker) -> None:
    a, b = new_device(mqtt_broker), new_device(mqtt_broker)

    async def main() -> None:
        async with (
            mqtt_client(mqtt_broker.gateway_endpoint()) as gateway,
            mqtt_client(a) as dev_a,
            mqtt_client(b) as dev_b,
        ):
            # Mosquitto's acl_file grants these SUBSCRIBEs and filters each delivery instead.
            for topic in (inbox(b), "edge/v1/gw/+/inbox", "edge/v1/#", "#", inbox(a)):
                await dev_a.subscribe(topic, qos=1)
            await dev_b.subscribe(inbox(b), qos=1)
            assert await publish_acked(gateway, inbox(b), b"for b") == RC_SUCCESS
            assert await publish_acked(gateway, dev_topic(b, "state"), b"b state") in ACCEPTED
            assert await publish_acked(gateway, inbox(a), b"marker for a") == RC_SUCCESS
            received = await messages_until(dev_a, inbox(a))
            assert [m.payload for m in received] == [b"marker for a"]
            assert (await next_message(dev_b)).payload == b"for b"

    asyncio.run(main())


def test_a_device_cannot_take_over_another_devices_session(mqtt_broker: Broker) -> None:
    a, b = new_device(mqtt_broker), new_device(mqtt_broker)

    async def main() -> None:
        async with (
            mqtt_client(mqtt_broker.gateway_endpoint()) as gateway,
            mqtt_client(b, identifier=b.username) as dev_b,
        ):
            await dev_b.subscribe(inbox(b), qos=1)
            # Same client id as B: on the device listener the id is replaced by A's username.
            async with mqtt_client(a, identifier=b.username) as impostor:
                assert await publish_acked(impostor, dev_topic(a, "state"), b"a") in ACCEPTED
                await publish_acked(gateway, inbox(b), b"still b")
                assert (await next_message(dev_b)).payload == b"still b"

    asyncio.run(main())


def test_token_account_is_limited_to_its_enrolment_topics(mqtt_broker: Broker) -> None:
    token, other_token, device = (
        new_token_account(mqtt_broker),
        new_token_account(mqtt_broker),
        new_device(mqtt_broker),
    )

    async def main() -> None:
        async with (
            mqtt_client(mqtt_broker.gateway_endpoint()) as gateway,
            mqtt_client(token) as enrolling,
        ):
            await gateway.subscribe("edge/v1/enrol/+/req", qos=1)
            await enrolling.subscribe("edge/v1/#", qos=1)
            for topic in (
                enrol_topic(other_token, "req"),
                enrol_topic(token, "reply"),
                dev_topic(device, "state"),
                inbox(device),
            ):
                assert await publish_acked(enrolling, topic, b"x") == RC_NOT_AUTHORIZED, topic
            assert await publish_acked(enrolling, enrol_topic(token, "req"), b"pk") == RC_SUCCESS
            request = await next_message(gateway)
            assert (request.topic.value, request.payload) == (enrol_topic(token, "req"), b"pk")

            await publish_acked(gateway, enrol_topic(other_token, "reply"), b"not yours")
            await publish_acked(gateway, inbox(device), b"not yours either")
            await publish_acked(gateway, enrol_topic(token, "reply"), b"creds")
            received = await messages_until(enrolling, enrol_topic(token, "reply"))
            assert [m.payload for m in received] == [b"creds"]

    asyncio.run(main())


def test_gateway_reads_writes_all_of_edge_v1_and_workers_share_pulls(mqtt_broker: Broker) -> None:
    device = new_device(mqtt_broker)
    gateway = mqtt_broker.gateway_endpoint()
    n_pulls = 20

    async def main() -> None:
        async with (
            mqtt_client(gateway, identifier="gw-worker-1") as worker_1,
            mqtt_client(gateway, identifier="gw-worker-2") as worker_2,
            mqtt_client(device) as dev,
        ):
            for worker in (worker_1, worker_2):
                await worker.subscribe("$share/gw/edge/v1/dev/+/pull", qos=1)
                await worker.subscribe(dev_topic(device, "state"), qos=1)
            for i in range(n_pulls):
                await publish_acked(dev, dev_topic(device, "pull"), str(i))
            await publish_acked(dev, dev_topic(device, "state"), b"marker")
            seen = [
                await messages_until(worker, dev_topic(device, "state"))
                for worker in (worker_1, worker_2)
            ]
            pulls = [[m.payload for m in got[:-1]] for got in seen]
            assert sorted(pulls[0] + pulls[1], key=int) == [str(i).encode() for i in range(20)]
            assert pulls[0] and pulls[1], "both workers get a share"
            # The gateway writes any device's inbox and enrolment reply, nothing outside edge/v1.
            assert await publish_acked(worker_1, inbox(device), b"t") in ACCEPTED
            assert (
                await publish_acked(worker_1, "edge/v1/enrol/tok-0123456789abcdef/reply", b"r")
                in ACCEPTED
            )
            assert await publish_acked(worker_1, "elsewhere/x", b"x") == RC_NOT_AUTHORIZED

    asyncio.run(main())


# ---------------------------------------------------------------- credentials at run time


def test_client_added_at_run_time_connects_without_dropping_others(mqtt_broker: Broker) -> None:
    connected = new_device(mqtt_broker)

    async def main() -> None:
        async with (
            mqtt_client(mqtt_broker.gateway_endpoint()) as gateway,
            mqtt_client(connected) as old,
        ):
            await gateway.subscribe("edge/v1/dev/+/state", qos=1)
            await old.subscribe(inbox(connected), qos=1)
            late = new_device(mqtt_broker)  # rewrites the password file and reloads
            async with mqtt_client(late) as new:
                assert await publish_acked(new, dev_topic(late, "state"), b"new") == RC_SUCCESS
            assert (await next_message(gateway)).topic.value == dev_topic(late, "state")
            # The already-connected device kept its connection through the reload.
            assert await publish_acked(old, dev_topic(connected, "state"), b"old") == RC_SUCCESS
            assert (await next_message(gateway)).payload == b"old"
            await publish_acked(gateway, inbox(connected), b"ping")
            assert (await next_message(old)).payload == b"ping"

    asyncio.run(main())


def test_removed_client_is_disconnected_and_refused(mqtt_broker: Broker) -> None:
    device, bystander = new_device(mqtt_broker), new_device(mqtt_broker)

    async def main() -> None:
        async with mqtt_client(device) as doomed, mqtt_client(bystander) as kept:
            await kept.subscribe(inbox(bystander), qos=1)
            assert mqtt_broker.remove_client(device.username)
            assert not mqtt_broker.has_client(device.username)
            with pytest.raises(aiomqtt.MqttError):
                await next_message(doomed)  # Mosquitto drops it on reload
            async with mqtt_client(mqtt_broker.gateway_endpoint()) as gateway:
                await publish_acked(gateway, inbox(bystander), b"still here")
                assert (await next_message(kept)).payload == b"still here"
        with pytest.raises(aiomqtt.MqttCodeError):
            async with mqtt_client(device):
                pass

    asyncio.run(main())
    assert not mqtt_broker.remove_client(device.username)  # already gone: no reload needed


# ---------------------------------------------------------------- state, will, persistence

# A device in another process: retained "online" state and a retained last-will "offline".
DEVICE_PROCESS = """
import asyncio, os, aiomqtt
async def main():
    user = os.environ["MQTT_USER"]
    state = "edge/v1/dev/%s/state" % user
    will = aiomqtt.Will(state, b"offline", qos=1, retain=True)
    async with aiomqtt.Client(os.environ["MQTT_HOST"], int(os.environ["MQTT_PORT"]),
                              username=user, password=os.environ["MQTT_PASSWORD"], will=will,
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(state, b"online", qos=1, retain=True)
        print("ready", flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


def test_last_will_offline_is_retained_when_a_device_dies(mqtt_broker: Broker) -> None:
    device = new_device(mqtt_broker)
    env = dict(
        os.environ,
        MQTT_HOST=device.host,
        MQTT_PORT=str(device.port),
        MQTT_USER=device.username,
        MQTT_PASSWORD=device.password,
    )

    async def main() -> None:
        async with mqtt_client(mqtt_broker.gateway_endpoint()) as gateway:
            await gateway.subscribe(dev_topic(device, "state"), qos=1)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", DEVICE_PROCESS, env=env, stdout=asyncio.subprocess.PIPE
            )
            assert proc.stdout is not None
            try:
                async with asyncio.timeout(WAIT_S):
                    assert await proc.stdout.readline() == b"ready\n"
                assert (await next_message(gateway)).payload == b"online"
            finally:
                proc.kill()  # no DISCONNECT: the broker sees the socket die
                await proc.communicate()
            offline = await next_message(gateway)
            assert (offline.topic.value, offline.payload) == (
                dev_topic(device, "state"),
                b"offline",
            )
        async with mqtt_client(mqtt_broker.gateway_endpoint()) as late_reader:
            await late_reader.subscribe(dev_topic(device, "state"), qos=1)
            retained = await next_message(late_reader)
            assert (retained.payload, retained.retain) == (b"offline", True)

    asyncio.run(main())


def test_restart_keeps_retained_state_ports_and_accounts(fresh_broker: Broker) -> None:
    broker = fresh_broker
    device = new_device(broker)
    ports = (broker.port, broker.gateway_port)

    async def publish_state() -> None:
        async with mqtt_client(device) as dev:
            await publish_acked(dev, dev_topic(device, "state"), b"charging", retain=True)

    async def read_state(gateway: BrokerEndpoint) -> aiomqtt.Message:
        async with mqtt_client(gateway) as reader:
            await reader.subscribe("edge/v1/dev/+/state", qos=1)
            return await next_message(reader)

    asyncio.run(publish_state())
    old_pid = broker.pid
    broker.restart()
    assert broker.pid != old_pid and (broker.port, broker.gateway_port) == ports
    retained = asyncio.run(read_state(broker.gateway_endpoint()))
    assert (retained.payload, retained.retain) == (b"charging", True)

    # A new Broker object on the same state dir: same gateway password, same devices, same state.
    gateway_password = broker.gateway_endpoint().password
    broker.stop()
    with Broker(broker.dir.parent) as again:
        assert again.gateway_endpoint().password == gateway_password
        assert again.has_client(device.username)
        assert probe_login(again.endpoint(device.username, device.password)) == 0
        assert asyncio.run(read_state(again.gateway_endpoint())).payload == b"charging"


# ---------------------------------------------------------------- process management


def test_supervisor_restarts_a_killed_mosquitto(
    fresh_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    broker = fresh_broker
    device = new_device(broker)
    caplog.set_level(logging.WARNING, logger="gateway.broker")

    async def main() -> None:
        restarted = asyncio.Event()
        supervisor = asyncio.create_task(
            broker.supervise(initial_backoff=0.05, on_restart=lambda _n: restarted.set())
        )
        old_pid = broker.pid
        assert old_pid is not None
        async with mqtt_client(device) as dev:
            await dev.subscribe(inbox(device), qos=1)
            os.kill(old_pid, signal.SIGKILL)
            with pytest.raises(aiomqtt.MqttError):
                await next_message(dev)  # the connection is lost
        async with asyncio.timeout(WAIT_S):
            await restarted.wait()
        assert broker.pid not in (None, old_pid)
        async with (
            mqtt_client(broker.gateway_endpoint()) as gateway,
            mqtt_client(device) as dev,
        ):
            await gateway.subscribe(dev_topic(device, "pull"), qos=1)
            assert await publish_acked(dev, dev_topic(device, "pull"), b"back") == RC_SUCCESS
            assert (await next_message(gateway)).payload == b"back"
        broker.stop()
        async with asyncio.timeout(WAIT_S):
            await supervisor  # returns once stop() was called
        assert not broker.running

    asyncio.run(main())
    assert "exited with code -9" in caplog.text
    assert "mosquitto restarted" in caplog.text


def test_start_failure_raises_with_the_log_tail(tmp_path: Path) -> None:
    with Broker(tmp_path / "first") as first:
        taken = Broker(tmp_path / "second", port=first.port)
        with pytest.raises(BrokerError, match="Address already in use"):
            taken.start()
        assert not taken.running


def test_reload_of_a_stopped_broker_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="not running"):
        Broker(tmp_path).reload()
