"""The Dramatiq broker every process shares: Dramatiq's public ``Broker`` interface on Redis Streams.

``create_broker(settings)`` builds it; nothing here connects at import time. Each queue (and each delay
queue, ``<queue>.DQ``) is a stream read by one consumer group: enqueue is ``XADD``, an idle consumer waits in
``XREADGROUP … BLOCK`` (woken by the next ``XADD``, no polling), an ack is ``XACK`` + ``XDEL``, and what a
dead or stopped consumer held goes back to the stream's end (``hand_back``). Dead letters are a stream of
their own, kept until replayed or purged by ``DEAD_LETTER_RETENTION_HOURS``. Every write also keeps the
message's *locator* (message id → stream and entry id) in one hash, in the same script, so that
reconciliation can ask "is this event still in Redis?" for a page of ids in one call (docs/DESIGN.md §5,
§13). The scripts are in ``streams.lua``; every key is this project's own.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dramatiq
import msgspec
import redis
from dramatiq import Message, Middleware
from dramatiq.broker import Broker, Consumer, MessageProxy
from dramatiq.common import current_millis, dq_name, q_name
from dramatiq.encoder import Encoder, MessageData
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import (
    AgeLimit,
    AsyncIO,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from shared.settings import Settings

NAMESPACE = "signup"
GROUP = "workers"
# A process whose consumers have not beaten for this long is dead: the others hand back what it held.
HEARTBEAT_TIMEOUT_MS = 10_000
BEAT_INTERVAL_MS = 1_000
# How often each consumer looks for dead ones (with jitter, so that processes do not look in lockstep).
CLAIM_INTERVAL_MS = 5_000
# How often a consumer polls while an eta it holds is due within two of Redis's clock ticks (a blocked read
# ends on a tick: 100 ms at Redis's default hz 10), or while its worker stops.
POLL_MS = 50
REDIS_TICK_MS = 100
# How long a call may wait for Redis before it counts as down: a partitioned Redis must not hold a worker
# thread's ack, or a relay's batch and its row locks, forever.
SOCKET_TIMEOUT_S = 10.0
# How much longer than its block a read may take to answer before its connection counts as dead.
WAIT_MARGIN_S = 1.0
# A message older than this is dropped by AgeLimit; ours must never be, so the limit is a week.
MAX_AGE_MS = 7 * 24 * 3600 * 1000
# What a consumer treats as "Redis is gone": redis-py raises TimeoutError, not a ConnectionError, when a
# connection stops answering within its socket timeout.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


def _scripts() -> dict[str, str]:
    """The scripts of streams.lua, by the name each one's ``-- !name`` line gives."""
    scripts: dict[str, str] = {}
    name = ""
    for line in Path(__file__).with_name("streams.lua").read_text().splitlines():
        if line.startswith("-- !"):
            name = line[4:].split()[0]
            scripts[name] = ""
        elif name:
            scripts[name] += line + "\n"
    return scripts


SCRIPTS = _scripts()


class MsgspecJSONEncoder(Encoder):
    """Dramatiq's JSON message format, written and read by msgspec instead of the ``json`` module.

    The bytes are JSON that Dramatiq's own ``JSONEncoder`` reads, and it reads theirs (non-ASCII is written
    as UTF-8 rather than ``\\u`` escapes). The relay encodes one message per outbox row, and ``json.dumps``
    was a fifth of its time per row in a backlog drain.
    """

    def __init__(self) -> None:
        self.encoder = msgspec.json.Encoder()

    def encode(self, data: MessageData) -> bytes:
        return self.encoder.encode(data)

    def decode(self, data: bytes) -> MessageData:
        decoded: MessageData = msgspec.json.decode(data)  # Message.decode turns its errors into DecodeError
        return decoded


@dataclass(frozen=True)
class DeadLetter:
    """A message that failed for good, as it was when it died (``options["last_error"]`` says why)."""

    entry_id: str
    queue: str
    message: Message[Any]

    @property
    def dead_at(self) -> datetime:
        return datetime.fromtimestamp(int(self.entry_id.split("-")[0]) / 1000, UTC)

    @property
    def error(self) -> str:
        return str(self.message.options.get("last_error") or "unknown")


class StreamMessage(MessageProxy):
    """A delivered message and the stream entry it came from (what ``ack`` and ``nack`` remove)."""

    def __init__(self, message: Message[Any], entry_id: str) -> None:
        super().__init__(message)
        self.entry_id = entry_id


class StreamsBroker(Broker):
    """Dramatiq's ``Broker`` on Redis Streams, one consumer group per queue, see the module's docstring.

    ``poll_ms`` is how often a consumer polls while it holds delayed messages (Redis times a blocked read
    out only on its own clock tick, too coarse for an eta) or while its worker stops; an idle consumer
    blocks for the ``timeout`` Dramatiq's worker gives it. Raises redis-py's errors from ``enqueue``.
    """

    def __init__(
        self,
        *,
        url: str,
        middleware: list[Middleware] | None = None,
        namespace: str = NAMESPACE,
        poll_ms: int = POLL_MS,
        socket_timeout: float = SOCKET_TIMEOUT_S,
    ) -> None:
        super().__init__(middleware=middleware)
        self.url = url
        self.namespace = namespace
        self.poll_ms = poll_ms
        self.queues: set[str] = set()
        self.broker_id = str(uuid.uuid4())
        """This process's consumer name in every group, and its member in the heartbeat set."""
        # redis-py's return types are a union of its sync and async clients': Any here.
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        self.scripts = {name: self.client.register_script(text) for name, text in SCRIPTS.items()}
        self.stopping = threading.Event()
        """Set when a worker on this broker starts to stop: its consumers then poll instead of blocking."""
        self.consumers: list[StreamConsumer] = []
        self.last_beat_ms = 0
        self.beat_lock = threading.Lock()
        self.add_middleware(_StopBlocking())

    # Keys. -----------------------------------------------------------------------------------------------

    def stream_key(self, queue_name: str) -> str:
        return f"{self.namespace}:q:{queue_name}"

    @property
    def dead_key(self) -> str:
        return f"{self.namespace}:dead"

    @property
    def locators_key(self) -> str:
        return f"{self.namespace}:locators"

    @property
    def heartbeats_key(self) -> str:
        return f"{self.namespace}:consumers"

    # Dramatiq's Broker interface. -------------------------------------------------------------------------

    def declare_queue(self, queue_name: str) -> None:
        if queue_name in self.queues:
            return
        self.emit_before("declare_queue", queue_name)
        self.queues.add(queue_name)
        self.emit_after("declare_queue", queue_name)
        delayed = dq_name(queue_name)
        self.delay_queues.add(delayed)
        self.emit_after("declare_delay_queue", delayed)

    def get_declared_queues(self) -> set[str]:
        return set(self.queues)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Add ``message`` to its queue's stream, or with ``delay`` (ms) to its delay queue's. Raises
        redis-py's errors."""
        return self.enqueue_many([(message, delay)])[0]

    def enqueue_many(self, messages: Sequence[tuple[Message[Any], int | None]]) -> list[Message[Any]]:
        """``enqueue`` for many ``(message, delay)`` at once, in one script call: all of them or none.

        The enqueue middleware hooks run for each message, but only for middleware that has them (most of
        Dramatiq's are no-ops, which per message cost as much as building it).
        """
        now = current_millis()
        enqueued = [self._delayed(message, delay, now) for message, delay in messages]
        before, after = _hooked(self, "before_enqueue"), _hooked(self, "after_enqueue")
        if before:
            for message, (_, delay) in zip(enqueued, messages, strict=True):
                self.emit_before("enqueue", message, delay)
        keys = [self.locators_key, *(self.stream_key(message.queue_name) for message in enqueued)]
        args: list[Any] = []
        for message in enqueued:
            args += [message.message_id, message.encode()]
        self.scripts["publish"](keys=keys, args=args)
        if after:
            for message, (_, delay) in zip(enqueued, messages, strict=True):
                self.emit_after("enqueue", message, delay)
        return enqueued

    @staticmethod
    def _delayed(message: Message[Any], delay: int | None, now_ms: int) -> Message[Any]:
        # As Dramatiq's brokers do: any delay, even 0, goes through the delay queue with an eta.
        if delay is None:
            return message
        return message.copy(queue_name=dq_name(message.queue_name), options={"eta": now_ms + delay})

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        """A consumer of ``queue_name``'s stream, in place of this process's previous one (Dramatiq starts a
        new one after a failure or a pause). Raises ``ConnectionClosed`` when Redis cannot be reached."""
        for previous in [c for c in self.consumers if c.queue_name == queue_name]:
            previous.client.close()
            self.consumers.remove(previous)
        try:
            return StreamConsumer(self, queue_name, prefetch=prefetch, timeout_ms=timeout)
        except REDIS_DOWN as exc:
            raise ConnectionClosed(exc) from None

    def flush(self, queue_name: str) -> None:
        self.client.delete(self.stream_key(queue_name))

    def flush_all(self) -> None:
        for queue_name in self.queues | self.delay_queues:
            self.flush(queue_name)
        self.client.delete(self.dead_key, self.locators_key)

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        """Wait until ``queue_name`` and its delay queue hold nothing. Raises ``TimeoutError``."""
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while self.waiting(queue_name) or self.waiting(dq_name(queue_name)):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"queue {queue_name} did not drain in {timeout} ms")
            time.sleep(self.poll_ms / 1000)

    def close(self) -> None:
        """Leave the heartbeat set (a stopped process is not dead) and close the connections."""
        with contextlib.suppress(redis.RedisError):
            self.client.zrem(self.heartbeats_key, self.broker_id)
        self.client.close()

    # What the relay, reconciliation, ``signup dlq`` and the lab need. ------------------------------------

    def streams(self) -> list[str]:
        """The queues (and delay queues) that have a stream in Redis now, declared here or not."""
        prefix = self.stream_key("")
        return sorted(key.decode()[len(prefix) :] for key in self.client.scan_iter(match=f"{prefix}*"))

    def waiting(self, queue_name: str) -> int:
        """How many messages of ``queue_name`` wait or are held by a worker (0 when the stream is gone)."""
        return int(self.client.xlen(self.stream_key(queue_name)))

    def held(self, queue_name: str) -> int:
        """How many messages of ``queue_name`` workers were delivered and have not acknowledged."""
        try:
            return int(self.client.xpending(self.stream_key(queue_name), GROUP)["pending"])
        except redis.ResponseError:
            return 0  # no stream or no group: nothing delivered

    def messages(self, queue_name: str) -> list[Message[Any]]:
        """The messages of ``queue_name`` that are still in Redis, waiting or held, oldest first."""
        entries = self.client.xrange(self.stream_key(queue_name))
        return [Message.decode(fields[b"m"]) for _, fields in entries]

    def locate(self, message_ids: list[str]) -> list[bool]:
        """For each message id, whether its message is still in Redis: waiting, held by a worker, delayed
        or dead (one script call). Raises redis-py's errors."""
        if not message_ids:
            return []
        found = self.scripts["locate"](keys=[self.locators_key], args=message_ids)
        return [bool(flag) for flag in found]

    def beat(self) -> None:
        """Record that this process's consumers are alive, at most once per ``BEAT_INTERVAL_MS``."""
        now = current_millis()
        with self.beat_lock:
            if now - self.last_beat_ms < BEAT_INTERVAL_MS:
                return
            self.last_beat_ms = now
        self.client.zadd(self.heartbeats_key, {self.broker_id: now})

    def beats_since(self, since_ms: int) -> int:
        """How many processes' consumers beat at or after ``since_ms`` (wall clock, ms)."""
        return int(self.client.zcount(self.heartbeats_key, since_ms, "+inf"))

    def hand_back(self, queue_name: str, consumer: str | None = None) -> int:
        """Put every message ``consumer`` (this process by default) was delivered on ``queue_name`` and did
        not acknowledge back at the end of its stream, and remove the consumer from the group. Returns how
        many went back. Raises redis-py's errors."""
        moved = self.scripts["hand_back"](
            keys=[self.stream_key(queue_name), self.locators_key], args=[GROUP, consumer or self.broker_id]
        )
        return int(moved)

    def hand_back_all(self) -> int:
        """``hand_back`` on every declared queue and delay queue: what a stopping worker must not keep."""
        queues = self.get_declared_queues() | self.get_declared_delay_queues()
        return sum(self.hand_back(queue_name) for queue_name in sorted(queues))

    def dead_letters(self, *, after: str = "-", count: int = 1000) -> list[DeadLetter]:
        """Dead letters, oldest first, starting after the entry id ``after`` (keyset pagination)."""
        start = "-" if after == "-" else f"({after}"
        entries = self.client.xrange(self.dead_key, start, "+", count=count)
        return [_dead_letter(entry_id, fields) for entry_id, fields in entries]

    def dead_count(self) -> int:
        """How many dead letters there are."""
        return int(self.client.xlen(self.dead_key))

    def dead_letter(self, entry_id: str) -> DeadLetter | None:
        """The dead letter with ``entry_id``, or None when it is gone (replayed, discarded or purged)."""
        if not ENTRY_ID.fullmatch(entry_id):
            return None
        entries = self.client.xrange(self.dead_key, entry_id, entry_id)
        return _dead_letter(*entries[0]) if entries else None

    def replay(self, letter: DeadLetter) -> Message[Any] | None:
        """Put ``letter`` back on its queue with its message id and fresh retries, and drop the dead letter,
        in one script call. Returns the message requeued, or None when the dead letter was gone already (a
        replay or discard got there first). Raises redis-py's errors."""
        dead = letter.message
        fresh: Message[Any] = Message(
            queue_name=q_name(letter.queue),
            actor_name=dead.actor_name,
            args=dead.args,
            kwargs=dead.kwargs,
            options={k: v for k, v in dead.options.items() if k not in _DELIVERY_OPTIONS},
            message_id=dead.message_id,
            message_timestamp=dead.message_timestamp,
        )
        moved = self.scripts["move"](
            keys=[self.dead_key, self.stream_key(fresh.queue_name), self.locators_key],
            args=["", letter.entry_id, fresh.encode()],
        )
        return fresh if moved else None

    def discard(self, letter: DeadLetter) -> bool:
        """Remove ``letter`` and its locator for good, in one script call. Returns False when it was gone
        already. Raises redis-py's errors."""
        return bool(self.scripts["discard"](keys=[self.dead_key, self.locators_key], args=[letter.entry_id]))

    # What the operator console reads. ---------------------------------------------------------------------

    def tally(self, kind: str, count: int = 1) -> None:
        """Add ``count`` to this minute's tally of ``kind`` (a retry, a dead letter), kept
        ``TALLY_MINUTES``. Raises redis-py's errors."""
        key = self._tally_key(kind, current_millis() // 60_000)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.incrby(key, count).expire(key, TALLY_MINUTES * 60).execute()

    def tallies(self, kind: str, *, minutes: int = 60, now_ms: int | None = None) -> list[int]:
        """The tally of ``kind`` for each of the last ``minutes`` minutes, oldest first (one MGET)."""
        last = (now_ms or current_millis()) // 60_000
        keys = [self._tally_key(kind, minute) for minute in range(last - minutes + 1, last + 1)]
        return [int(value or 0) for value in self.client.mget(keys)]

    def _tally_key(self, kind: str, minute: int) -> str:
        return f"{self.namespace}:tally:{kind}:{minute}"

    def announce(self, role: str) -> None:
        """Record that this process (``role``: ``relay``; workers beat through their consumers) is alive
        now. Raises redis-py's errors."""
        self.client.zadd(self._alive_key(role), {self.broker_id: current_millis()})

    def last_beats(self, role: str) -> list[tuple[str, datetime]]:
        """The processes of ``role`` (``worker`` or ``relay``) seen in the last hour, with their last beat,
        the latest first; older ones are forgotten."""
        key = self.heartbeats_key if role == "worker" else self._alive_key(role)
        if role != "worker":
            self.client.zremrangebyscore(key, "-inf", current_millis() - 3_600_000)
        beats = self.client.zrevrangebyscore(key, "+inf", current_millis() - 3_600_000, withscores=True)
        return [(name.decode(), datetime.fromtimestamp(score / 1000, UTC)) for name, score in beats]

    def _alive_key(self, role: str) -> str:
        return f"{self.namespace}:alive:{role}"

    def purge_dead_letters(self, *, older_than_ms: int, now_ms: int | None = None) -> int:
        """Remove the dead letters that died more than ``older_than_ms`` before ``now_ms`` (default: now),
        with their locators, 1000 per script call. Returns how many went."""
        keep_from = f"{(now_ms or current_millis()) - older_than_ms}-0"
        removed = 0
        while True:
            gone = int(self.scripts["purge"](keys=[self.dead_key, self.locators_key], args=[keep_from, 1000]))
            removed += gone
            if gone < 1000:
                return removed


# How long the per-minute tallies the console charts are kept.
TALLY_MINUTES = 120
ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


# Options that belong to one delivery, not to the message: a replay starts afresh.
_DELIVERY_OPTIONS = ("retries", "traceback", "eta", "last_error")


class StreamConsumer(Consumer):
    """Delivers one queue's messages to Dramatiq's worker; see ``StreamsBroker``.

    It keeps at most ``prefetch`` messages delivered and not yet acknowledged. Every Redis failure is a
    ``ConnectionClosed``: Dramatiq's consumer thread then starts a fresh consumer. Every consumer first reads
    again what this process was delivered and never acknowledged (Redis keeps it in the group's pending
    list), whatever ended its predecessor, and its worker threads retry an ack until Redis answers.
    """

    def __init__(self, broker: StreamsBroker, queue_name: str, *, prefetch: int, timeout_ms: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.stream = broker.stream_key(queue_name)
        self.prefetch = prefetch
        self.timeout_ms = timeout_ms
        # Its own connection: a blocked read holds it, and CLIENT UNBLOCK needs to know which one it is.
        self.client: Any = redis.Redis.from_url(
            broker.url, single_connection_client=True, socket_timeout=timeout_ms / 1000 + WAIT_MARGIN_S
        )
        self.client_id: int | None = None
        self.buffer: deque[StreamMessage] = deque()
        self.held: dict[str, float | None] = {}
        """The eta (or None) of each message delivered and not yet acknowledged, by entry id."""
        self.lock = threading.Lock()
        self.freed = threading.Event()
        self.history: str | None = "0"
        """Where the re-read of what this process was delivered and did not acknowledge is; None once it is
        done. Every consumer begins with it: one that replaces a failed one must read again what Dramatiq
        dropped from memory with it (a delayed message whose hand-over met Redis down, say), which Redis
        still lists as delivered to this live process, so that no one else would ever take it."""
        self.next_claim_ms = 0
        self.group_ready = False
        broker.consumers.append(self)

    def __next__(self) -> MessageProxy | None:
        try:
            if not self.buffer:
                self._fetch()
            return self.buffer.popleft() if self.buffer else None
        except REDIS_DOWN as exc:
            raise ConnectionClosed(exc) from None

    def _fetch(self) -> None:
        self.freed.clear()
        if not self.group_ready:
            self._create_group()
        self.broker.beat()
        now = current_millis()
        if now >= self.next_claim_ms:
            self.next_claim_ms = now + CLAIM_INTERVAL_MS + int.from_bytes(uuid.uuid4().bytes[:2]) % 1000
            self._claim_from_dead()
        with self.lock:
            held = len(self.held)
            etas = [eta for eta in self.held.values() if eta is not None]
        due_in = min(etas) - now if etas else None
        # Where to wait: blocked in Redis (a new message ends the wait at once), for at most a quarter of the
        # heartbeat timeout (the read is also when this process beats); or here, polling every ``poll_ms``,
        # when an eta is nearer than Redis's clock can time (it ends a blocked read only on its tick) or the
        # worker is stopping.
        longest = max(1, min(self.timeout_ms, HEARTBEAT_TIMEOUT_MS // 4))
        block_ms: int | None = longest
        if self.broker.stopping.is_set() or (due_in is not None and due_in < 2 * REDIS_TICK_MS):
            block_ms = None
        elif due_in is not None:
            block_ms = int(min(longest, due_in - REDIS_TICK_MS))
        local_ms = self.broker.poll_ms if due_in is None else max(0.0, min(self.broker.poll_ms, due_in))
        room = self.prefetch - held
        if room <= 0 or (held and room < self.prefetch // 2):
            # Full, or more than half full: reading again now would fetch a message or two per round trip
            # while the worker's threads are all busy anyway (Dramatiq prefetches twice its threads). An
            # ack, not Redis, says when to read again.
            self.freed.wait((local_ms if block_ms is None else block_ms) / 1000)
        elif not self._read(room, block_ms=block_ms) and block_ms is None:
            self.freed.wait(local_ms / 1000)

    def _create_group(self) -> None:
        # From the stream's start: what was added before any consumer existed is read too. After Redis lost
        # its data (the group with it), the first read's NOGROUP brings the consumer back here.
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.client_id = int(self.client.client_id())
        self.group_ready = True

    def _read(self, count: int, *, block_ms: int | None) -> int:
        """Read up to ``count`` entries into the buffer (this process's unacknowledged ones first)."""
        start = self.history or ">"
        try:
            reply = self.client.xreadgroup(
                GROUP, self.broker.broker_id, {self.stream: start}, count=count, block=block_ms
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise
            self.group_ready = False
            return 0
        entries = reply[0][1] if reply else []
        if self.history is not None:
            if not entries:  # all re-read: now the new ones
                self.history = None
                return self._read(count, block_ms=block_ms)
            self.history = entries[-1][0].decode()
        for entry_id, fields in entries:
            if not fields:  # deleted after delivery (handed back by another process): nothing to do
                self.broker.client.xack(self.stream, GROUP, entry_id)
                continue
            message = StreamMessage(Message.decode(fields[b"m"]), entry_id.decode())
            eta = message.options.get("eta")
            with self.lock:
                self.held[message.entry_id] = eta if isinstance(eta, int | float) else None
            self.buffer.append(message)
        return len(entries)

    def _claim_from_dead(self) -> None:
        """Hand back what consumers of this stream whose process stopped beating were delivered."""
        client = self.broker.client
        try:
            consumers = client.xinfo_consumers(self.stream, GROUP)
        except redis.ResponseError:
            return  # no group yet
        beats = dict(client.zrange(self.broker.heartbeats_key, 0, -1, withscores=True))
        cutoff = current_millis() - HEARTBEAT_TIMEOUT_MS
        for consumer in consumers:
            name = consumer["name"]
            name = name.decode() if isinstance(name, bytes) else name
            if name != self.broker.broker_id and beats.get(name.encode(), 0) < cutoff:
                self.broker.hand_back(self.queue_name, name)
        client.zremrangebyscore(self.broker.heartbeats_key, "-inf", cutoff - 3600_000)

    def ack(self, message: MessageProxy) -> None:
        self._settle(message, "ack", args=[GROUP, _entry(message), message.message_id])

    def nack(self, message: MessageProxy) -> None:
        """Move ``message`` (with the options its last attempt left: retries, last error) to the dead
        letters."""
        dead = message.copy(queue_name=q_name(self.queue_name))
        self._settle(
            message,
            "move",
            args=[GROUP, _entry(message), dead.encode(), "q", dead.queue_name],
            keys=[self.stream, self.broker.dead_key, self.broker.locators_key],
        )

    def requeue(self, messages: Iterable[MessageProxy]) -> None:
        """Put ``messages`` back at the end of their stream at once (a stopping worker's unstarted ones)."""
        for message in messages:
            self._settle(
                message,
                "move",
                args=[GROUP, _entry(message), ""],
                keys=[self.stream, self.stream, self.broker.locators_key],
            )

    def _settle(
        self, message: MessageProxy, script: str, *, args: list[Any], keys: list[str] | None = None
    ) -> None:
        try:
            self.broker.scripts[script](keys=keys or [self.stream, self.broker.locators_key], args=args)
        except REDIS_DOWN as exc:
            raise ConnectionClosed(exc) from None
        with self.lock:
            self.held.pop(_entry(message), None)
        self.freed.set()

    def close(self) -> None:
        """Hand back what this process still holds of this queue (best effort: if Redis is down, the next
        consumer re-reads it, or another process hands it back once this one stops beating)."""
        try:
            if self.held or self.buffer:
                self.broker.hand_back(self.queue_name)
        except redis.RedisError:
            pass
        finally:
            self.client.close()
            if self in self.broker.consumers:
                self.broker.consumers.remove(self)

    def unblock(self) -> None:
        """End this consumer's blocked read now (it then sees that its worker stops)."""
        if self.client_id is not None:
            self.broker.client.client_unblock(self.client_id)


def _dead_letter(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        entry_id=entry_id.decode(), queue=fields[b"q"].decode(), message=Message.decode(fields[b"m"])
    )


def _entry(message: MessageProxy) -> str:
    entry_id: str = getattr(message, "entry_id", "")
    return entry_id


class _StopBlocking(Middleware):
    """Ends the consumers' blocked reads when their worker stops, so that a stop does not wait for them.

    Dramatiq's ``Worker.stop`` keeps consumers running until its worker threads are done, then waits for
    each consumer thread to notice it should stop; from here on they poll every ``poll_ms``.
    """

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        if not isinstance(broker, StreamsBroker):
            return
        broker.stopping.set()
        for consumer in list(broker.consumers):
            # If Redis is down, the blocked reads fail, and their threads stop anyway.
            with contextlib.suppress(redis.RedisError):
                consumer.unblock()


def _hooked(broker: Broker, hook: str) -> bool:
    """Whether any of ``broker``'s middleware overrides ``hook`` (Dramatiq's are no-ops on ``Middleware``)."""
    return any(getattr(type(m), hook) is not getattr(Middleware, hook) for m in broker.middleware)


def create_broker(
    settings: Settings,
    *,
    extra_middleware: list[Middleware] | None = None,
    poll_ms: int = POLL_MS,
    socket_timeout: float = SOCKET_TIMEOUT_S,
) -> StreamsBroker:
    """A ``StreamsBroker`` on ``REDIS_URL`` with retries configured from the ``WORKER_*`` settings.

    Sets Dramatiq's process-wide message encoder to ``MsgspecJSONEncoder`` (the same JSON, faster).
    """
    dramatiq.set_encoder(MsgspecJSONEncoder())
    middleware: list[Middleware] = [
        AgeLimit(max_age=MAX_AGE_MS),
        TimeLimit(time_limit=5 * 60 * 1000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(
            max_retries=settings.worker_max_retries,
            min_backoff=settings.worker_min_backoff_ms,
            max_backoff=settings.worker_max_backoff_ms,
        ),
        CurrentMessage(),
        AsyncIO(),
        *(extra_middleware or []),
    ]
    return StreamsBroker(
        url=settings.redis_url, middleware=middleware, poll_ms=poll_ms, socket_timeout=socket_timeout
    )


__all__ = [
    "DeadLetter",
    "MsgspecJSONEncoder",
    "StreamConsumer",
    "StreamsBroker",
    "create_broker",
]
