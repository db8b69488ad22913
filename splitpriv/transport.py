"""Client and server as separate processes: the split step over ``torch.distributed`` (Gloo).

The two parties meet in two stages:

1. **Handshake** (no tensor crosses before it ends). The client connects to the server's socket on
   ``host:port`` (the server binds ``127.0.0.1`` unless told otherwise). The server sends a random
   nonce; the client answers ``HMAC-SHA256(secret, nonce)`` and its hello (the data set's shape and
   classes, the run config's digest). The server compares the MAC in constant time and the config
   digest with its own, then answers with the port of the rendezvous, or with the reason it refuses.
2. **Gloo**: both join a two-rank ``ProcessGroupGloo`` (server rank 0, client rank 1) through a
   ``TCPStore`` on that port; its pairs bind to the handshake's addresses. Every tensor after this
   travels as a Gloo point-to-point send/receive.

A request is a header (``HEADER`` int64s: operation, step, dtype code, number of dimensions, shape)
followed by its tensors; the server checks every header (operation, step number, dtype, shape, batch
size, labels) before it computes, and answers a bad one with an error that ends both sides.

Not protected: Gloo traffic is not encrypted and the rendezvous store listens on every interface for
the seconds of the rendezvous. Use it on loopback, a private network or a tunnel (docs/transport.md).
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import hmac
import json
import os
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from splitpriv.errors import SplitprivError

HEADER = 12
TRAIN, EVAL, EPOCH_END, END, ERROR, TURN = 1, 2, 3, 4, 5, 6
OPERATIONS = {TRAIN: "train", EVAL: "eval", EPOCH_END: "epoch_end", END: "end", ERROR: "error", TURN: "turn"}
MODES = ("splitfed", "sequential")  # several clients: averaged each round, or taking turns
TURN_WAIT_FACTOR = 50  # a client waits for its turn (or a round's average) up to this many timeouts
DTYPES = {0: torch.float32, 1: torch.bfloat16, 2: torch.float16, 3: torch.int64, 4: torch.float64}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}
SECRET_ENV = "SPLITPRIV_SECRET"
DEFAULT_PORT = 29400


class TransportError(SplitprivError):
    """The other party refused, vanished, stalled or sent something unexpected; the message says which."""


class PeerLost(TransportError):
    """The other party vanished or stalled (as opposed to sending something wrong): a client may rejoin."""


def read_secret(secret_file: str | None) -> bytes:
    """The shared secret: the first line of ``secret_file``, else ``$SPLITPRIV_SECRET``."""
    if secret_file:
        try:
            text = open(secret_file, encoding="utf-8").readline().strip()
        except OSError as error:
            raise TransportError(f"cannot read the secret file {secret_file}: {error.strerror}") from None
    else:
        text = os.environ.get(SECRET_ENV, "")
    if len(text) < 16:
        raise TransportError(f"a shared secret of at least 16 characters is needed: put it in ${SECRET_ENV} or in a "
                             f"file given with --secret-file, the same on the server and every client "
                             f"(e.g. python -c 'import secrets; print(secrets.token_hex(16))')")
    return text.encode()


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, port 29400) -> (host, port)."""
    host, _, port = text.rpartition(":") if ":" in text else (text, "", str(DEFAULT_PORT))
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TransportError(f"expected HOST:PORT such as 127.0.0.1:{DEFAULT_PORT}, got {text!r}")
    return host, int(port)


# ----------------------------------------------------------------------------- handshake


def _send_json(connection: socket.socket, value: dict) -> None:
    payload = json.dumps(value).encode()
    connection.sendall(struct.pack("!I", len(payload)) + payload)


def _receive_exactly(connection: socket.socket, count: int) -> bytes:
    chunks = b""
    while len(chunks) < count:
        chunk = connection.recv(count - len(chunks))
        if not chunk:
            raise TransportError("the other party closed the connection during the handshake")
        chunks += chunk
    return chunks


def _receive_json(connection: socket.socket, limit: int = 1 << 16) -> dict:
    (length,) = struct.unpack("!I", _receive_exactly(connection, 4))
    if length > limit:
        raise TransportError(f"handshake message of {length} bytes refused (at most {limit})")
    try:
        value = json.loads(_receive_exactly(connection, length))
    except ValueError:
        raise TransportError("the handshake message is not JSON") from None
    if not isinstance(value, dict):
        raise TransportError("the handshake message is not a JSON object")
    return value


def _mac(secret: bytes, nonce: str) -> str:
    return hmac.new(secret, nonce.encode(), hashlib.sha256).hexdigest()


def free_port(host: str = "127.0.0.1") -> int:
    """A port no process listens on at ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def listen(host: str, port: int) -> socket.socket:
    """The server's handshake socket on ``host:port``. It stays open while the server runs: a client that
    connects while another is being admitted waits in the kernel's queue (closing the socket in between
    would reset its connection)."""
    return socket.create_server((host, port))


def accept_client(listener: socket.socket, secret: bytes, config_digest: str, timeout_s: float,
                  validate=None) -> tuple[dict, dist.Store, str]:
    """Server side: wait on ``listener`` (:func:`listen`) for one client that proves the secret and runs
    the same config (``validate(hello)``: a further reason to refuse it, or None). Returns (the client's
    hello, the rendezvous store, the server's address)."""
    host, port = listener.getsockname()[:2]
    listener.settimeout(timeout_s)
    while True:
        try:
            connection, peer = listener.accept()
        except socket.timeout:
            raise TransportError(f"no client connected to {host}:{port} within {timeout_s:.0f} s") from None
        with connection:
            connection.settimeout(timeout_s)
            try:
                hello = _admitted_hello(connection, peer, secret, config_digest, validate)
            except (TransportError, OSError):
                continue  # a probe, a broken client or one that gave up waiting: wait for the next one
            if hello is None:
                continue
            # listening before the client hears of its port, so that no other process can take the port
            store = open_store(host, 0, 0, timeout_s)
            try:
                _send_json(connection, {"rendezvous_port": store.port})
            except OSError:
                continue
            return hello, store, connection.getsockname()[0]


def _admitted_hello(connection: socket.socket, peer, secret: bytes, config_digest: str, validate) -> dict | None:
    """The hello of the client on ``connection`` if it is admitted; None after telling it why not."""
    nonce = secrets.token_hex(16)
    _send_json(connection, {"nonce": nonce})
    hello = _receive_json(connection)
    if not hmac.compare_digest(str(hello.get("mac", "")), _mac(secret, nonce)):
        _send_json(connection, {"refused": "wrong shared secret"})
        print(f"refused a client from {peer[0]}: wrong shared secret", flush=True)
        return None
    if hello.get("config_digest") != config_digest:
        _send_json(connection, {"refused": "the client's run config differs from the server's (model, cut, seed, "
                                           "training settings or clients); start both with the same config"})
        return None
    reason = validate(hello) if validate else None
    if reason:
        _send_json(connection, {"refused": reason})
        return None
    return hello


def join_server(host: str, port: int, secret: bytes, hello: dict, timeout_s: float) -> tuple[int, str]:
    """Client side: prove the secret and present ``hello``. Returns (rendezvous port, own address).
    Until the server's challenge arrives nothing has been sent, so a connection refused, reset or left
    unanswered before it is tried again until ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 1.0))
        except OSError as error:
            reason = error.strerror or str(error)
        else:
            if connection.getsockname() == connection.getpeername():
                # a TCP self-connection: the port was free and the kernel chose it as this socket's own
                connection.close()
                reason = "no server listening yet"
            else:
                try:
                    challenge = _receive_json(connection)
                except (TransportError, OSError) as error:
                    connection.close()
                    reason = f"the server did not send its challenge: {getattr(error, 'strerror', None) or error}"
                else:
                    break
        if time.monotonic() > deadline:
            raise TransportError(f"cannot reach the server at {host}:{port} ({reason}); is 'splitpriv serve' running "
                                 f"there?")
        time.sleep(0.2)
    with connection:
        try:
            _send_json(connection, {**hello, "mac": _mac(secret, str(challenge.get("nonce", "")))})
            answer = _receive_json(connection)
        except OSError as error:
            raise TransportError(f"the server at {host}:{port} closed the connection during the handshake "
                                 f"({error.strerror or error}); is it still running?") from None
        if "refused" in answer:
            raise TransportError(f"the server at {host}:{port} refused this client: {answer['refused']}")
        return int(answer["rendezvous_port"]), connection.getsockname()[0]


def open_store(host: str, port: int, rank: int, timeout_s: float) -> dist.Store:
    """The two parties' rendezvous store on ``host:port``: rank 0 listens (port 0: a port the OS
    picks), rank 1 connects."""
    try:
        return dist.TCPStore(host, port, 2, rank == 0, timeout=datetime.timedelta(seconds=timeout_s),
                             wait_for_workers=False)
    except (RuntimeError, dist.DistBackendError) as error:
        raise TransportError(f"the rendezvous store on {host}:{port} failed: {' '.join(str(error).split())[:200]}") from None


def config_digest(values: dict) -> str:
    """What both parties must agree on: the model, cut, seed and training settings."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the Gloo link


@dataclass(frozen=True)
class Shaping:
    """Link emulation on the sending side: each send of ``n`` bytes waits ``rtt_s / 2 + n / bandwidth``
    first, so a request and its reply together take RTT + (bytes there + bytes back) / bandwidth more,
    as the latency model's T^T = Size / bandwidth + RTT charges them (``bandwidth_bytes_per_s`` None:
    unlimited)."""

    bandwidth_bytes_per_s: float | None = None
    rtt_s: float = 0.0

    def delay_s(self, payload_bytes: int) -> float:
        return self.rtt_s / 2 + (payload_bytes / self.bandwidth_bytes_per_s if self.bandwidth_bytes_per_s else 0.0)


@dataclass
class Link:
    """A two-rank Gloo group: tensors to and from the other party, each wait bounded by ``timeout_s``."""

    group: dist.ProcessGroup
    rank: int
    timeout_s: float
    store: dist.Store = field(repr=False)
    shaping: Shaping = field(default_factory=Shaping)

    @classmethod
    def connect(cls, rank: int, store: dist.Store, own_address: str, timeout_s: float,
                shaping: Shaping | None = None) -> "Link":
        """The link through ``store`` (:func:`open_store`), this party being ``rank``."""
        options = dist.ProcessGroupGloo._Options()
        options._timeout = datetime.timedelta(seconds=timeout_s)
        try:
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=own_address)]
            group = dist.ProcessGroupGloo(store, rank, 2, options)
        except (RuntimeError, dist.DistBackendError) as error:
            raise TransportError(f"the rendezvous with the other party failed: {' '.join(str(error).split())[:200]}") from None
        return cls(group, rank, timeout_s, store, shaping or Shaping())

    @property
    def peer(self) -> int:
        return 1 - self.rank

    def send(self, *tensors: torch.Tensor) -> None:
        """One message of ``tensors`` (a reply, or a request with its header): delayed once by the shaping."""
        delay = self.shaping.delay_s(sum(t.numel() * t.element_size() for t in tensors))
        if delay:
            time.sleep(delay)
        for tensor in tensors:
            self._wait(lambda: self.group.send([tensor.detach().contiguous()], self.peer, 0), "sending")

    def receive(self, shape: tuple[int, ...], dtype: torch.dtype, timeout_s: float | None = None) -> torch.Tensor:
        tensor = torch.empty(shape, dtype=dtype)
        self._wait(lambda: self.group.recv([tensor], self.peer, 0), "waiting for", timeout_s)
        return tensor

    def _wait(self, start, doing: str, timeout_s: float | None = None) -> None:
        """Start a send or receive and wait for it; a closed peer fails the start itself, a silent one the wait."""
        timeout_s = timeout_s or self.timeout_s
        try:
            start().wait(datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, dist.DistBackendError) as error:
            party = "server" if self.peer == 0 else "client"
            raise PeerLost(f"{doing} the {party} failed: it vanished or stalled for more than "
                                 f"{timeout_s:.0f} s ({' '.join(str(error).split())[:160]})") from None

    # ------------------------------------------------------------------ framed requests
    def request(self, operation: int, step: int, *tensors: torch.Tensor) -> None:
        """A header describing ``tensors[0]`` (the message), then ``tensors``, as one message."""
        header = torch.zeros(HEADER, dtype=torch.int64)
        header[0], header[1] = operation, step
        if tensors:
            header[2], header[3] = DTYPE_CODES[tensors[0].dtype], tensors[0].dim()
            header[4:4 + tensors[0].dim()] = torch.tensor(tensors[0].shape)
        self.send(header, *tensors)

    def receive_header(self) -> tuple[int, int, torch.dtype | None, tuple[int, ...]]:
        header = self.receive((HEADER,), torch.int64).tolist()
        operation, step, code, ndim = header[:4]
        if operation not in OPERATIONS or code not in DTYPES or not 0 <= ndim <= HEADER - 4:
            raise TransportError(f"malformed header {header[:4 + max(0, min(ndim, HEADER - 4))]}: unknown operation, "
                                 f"dtype or rank; is the other party a splitpriv of the same version?")
        return operation, step, DTYPES[code], tuple(header[4:4 + ndim])

    def close(self) -> None:
        del self.group, self.store


# ----------------------------------------------------------------------------- the client's view of the server


class RemoteServer(nn.Module):
    """The server partition as the client sees it: ``forward(message)`` asks for logits (inference),
    ``train_step(message, labels)`` runs the server's half of the split step there and returns
    (loss, logits, the gradient w.r.t. the message). It holds no weights."""

    def __init__(self, link: Link, num_classes: int, clients: int = 1, mode: str = "splitfed", samples: int = 0,
                 step: int = 0, fed_link: Link | None = None):
        super().__init__()
        self.link, self.num_classes, self.step = link, num_classes, step  # step: the last one taken (a resume's)
        self.clients, self.mode, self.samples = clients, mode, samples
        self.fed_link = fed_link  # SplitFed's separate fed server, which averages the partitions instead of the server
        self.wire, self.wire_in_all = WireMeter(), WireMeter()  # this epoch's steps, and every step
        self.previous_start: float | None = None  # the start of this epoch's previous training step

    def train_step(self, message: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.step += 1
        started = time.perf_counter()
        if self.previous_start is not None:  # a whole step, from one request to the next
            for meter in (self.wire, self.wire_in_all):
                meter.add_step_interval(started - self.previous_start)
        self.previous_start = started
        self.link.request(TRAIN, self.step, message, labels.to(torch.int64))
        # the reply: [loss, the server's compute seconds, logits...] in one tensor, then the gradient
        head = self.link.receive((2 + len(message) * self.num_classes,), torch.float32)
        gradient = self.link.receive(tuple(message.shape), message.dtype)
        loss, server_s, logits = head[0], float(head[1]), head[2:].view(len(message), self.num_classes)
        for meter in (self.wire, self.wire_in_all):
            meter.add(time.perf_counter() - started, server_s, message, labels, gradient)
        return loss, logits, gradient

    def forward(self, message: torch.Tensor) -> torch.Tensor:
        self.link.request(EVAL, self.step, message)
        return self.link.receive((len(message), self.num_classes), torch.float32)

    def epoch_start(self, client: nn.Module) -> None:
        """Sequential split learning: wait for this client's turn and take the client partition as the
        previous client left it."""
        if self.clients > 1 and self.mode == "sequential":
            self.link.request(TURN, self.step)
            load_flat_state(client, self._receive_state(client))

    def epoch_end(self, client: nn.Module) -> None:
        """The round's end: one client - the server saves its state; SplitFed - the client partition
        is replaced by the round's average over the clients; sequential - it passes to the next client."""
        self.previous_start = None  # the validation pass and the round's end are not a training step
        if self.clients == 1 or self.fed_link is not None:
            self.link.request(EPOCH_END, self.step)
            self.link.receive((), torch.int64)  # the server has saved its state
        if self.clients == 1:
            return
        averaging = self.fed_link or self.link
        averaging.request(EPOCH_END, self.step, flat_state(client), torch.tensor(float(self.samples)))
        if self.mode == "splitfed":
            load_flat_state(client, self._receive_state(client, averaging))
        else:
            self.link.receive((), torch.int64)

    def _receive_state(self, client: nn.Module, link: Link | None = None) -> torch.Tensor:
        link = link or self.link
        return link.receive((flat_size(client),), torch.float64, link.timeout_s * TURN_WAIT_FACTOR)

    def finish(self) -> None:
        for link in (self.link, self.fed_link):
            if link is not None:
                link.request(END, self.step)
                link.close()


@dataclass
class WireMeter:
    """Bytes and seconds of the training steps since the last ``take``: round trip as the client
    measures it, the server's compute as the server reports it, and their difference (the wire);
    and the whole step as the client lives it, from one step's request to the next one's (its
    backward and update, the next batch's loading and forward, the round trip)."""

    steps: int = 0
    forward_bytes: float = 0.0
    backward_bytes: float = 0.0
    round_trip_s: float = 0.0
    server_s: float = 0.0
    intervals: int = 0
    interval_s: float = 0.0

    def add_step_interval(self, seconds: float) -> None:
        self.intervals += 1
        self.interval_s += seconds

    def add(self, round_trip_s: float, server_s: float, message, labels, gradient) -> None:
        self.steps += 1
        self.forward_bytes += message.numel() * message.element_size() + labels.numel() * 8
        self.backward_bytes += gradient.numel() * gradient.element_size()
        self.round_trip_s += round_trip_s
        self.server_s += server_s

    def take(self) -> dict[str, float]:
        """Per-step means, then reset."""
        steps = max(self.steps, 1)
        values = {"wire_forward_bytes_per_step": self.forward_bytes / steps,
                  "wire_backward_bytes_per_step": self.backward_bytes / steps,
                  "wire_round_trip_s_per_step": self.round_trip_s / steps,
                  "server_compute_s_per_step": self.server_s / steps,
                  "wire_time_s_per_step": (self.round_trip_s - self.server_s) / steps,
                  "training_step_s": self.interval_s / self.intervals if self.intervals else float("nan")}
        self.__init__()
        return values


# ----------------------------------------------------------------------------- the server's loop


def flat_state(module: nn.Module) -> torch.Tensor:
    """A module's state (parameters and buffers, in order) as one float64 vector."""
    return torch.cat([value.detach().flatten().double() for value in module.state_dict().values()])


def flat_size(module: nn.Module) -> int:
    return sum(value.numel() for value in module.state_dict().values())


def load_flat_state(module: nn.Module, flat: torch.Tensor) -> None:
    state, offset = module.state_dict(), 0
    for key, value in state.items():
        state[key] = flat[offset: offset + value.numel()].reshape(value.shape).to(value.dtype)
        offset += value.numel()
    module.load_state_dict(state)


class Rounds:
    """What the server does at the clients' round boundaries, shared by its clients' threads.

    At every round's end the server's state is saved (``save(step)``, step: the ending client's last
    training step; SplitFed: ``save(step, client_steps)``, each client's last step and their sum). One client: nothing more. Several, ``splitfed`` (Thapa et al. 2022): each
    client's partition after its round, w_k with n_k training samples, is averaged,
    w = Σ_k n_k w_k / Σ_k n_k (FedAvg), and every client continues from w. Several, ``sequential`` (vanilla split learning,
    Gupta & Raskar 2018): one client trains at a time, in index order, starting from the partition the
    previous one left. Either way the partitions pass through the process that holds the rounds: the
    serve process, which then sees the clients' weights (a white-box grant, unlike with one client),
    unless SplitFed's separate fed server (``splitpriv federate``) averages them. ``partitions``: whether
    the clients send their partitions here (False on a serve process whose clients average elsewhere:
    it then saves its state at each client's epoch end, as with one client).
    """

    def __init__(self, clients: int, mode: str, client: nn.Module, save, wait_s: float, partitions: bool = True,
                 server: nn.Module | None = None):
        self.clients, self.mode, self.save, self.wait_s = clients, mode, save, wait_s
        self.partitions = partitions and clients > 1
        # sequential: the server as each client left it, which answers that client's evaluations outside its
        # turns (its test pass runs while the next client trains)
        self.server, self.left, self.in_turn = server, {}, set()
        self.lock = threading.Condition()  # also serialises the server's computation across clients
        self.weights = flat_state(client)  # the partition the next client (or round) starts from
        self.turn, self.round, self.pending = 0, 0, {}
        self.failed: str | None = None

    def _wait_until(self, ready) -> None:
        if not self.lock.wait_for(lambda: ready() or self.failed, self.wait_s):
            raise TransportError(f"waited {self.wait_s:.0f} s for the other clients' round; one stalled or vanished")
        if self.failed:
            raise TransportError(f"another client's connection failed: {self.failed}")

    def start(self, link: Link, index: int) -> None:
        with self.lock:
            self._wait_until(lambda: self.turn == index)
            weights = self.weights
            self.in_turn.add(index)
        link.send(weights)

    def evaluating(self, index: int) -> nn.Module | None:
        """The server that answers client ``index``'s evaluation (call under ``lock``)."""
        if index in self.in_turn or index not in self.left:
            return self.server
        return self.left[index]

    def end(self, index: int, weights: torch.Tensor | None, samples: float, steps: int) -> torch.Tensor:
        """Client ``index``'s round ended after its training step ``steps``: the reply it is sent (the
        partition it continues from, or the step its state was saved at)."""
        with self.lock:
            if not self.partitions:
                self.save(steps)
                reply = torch.tensor(steps)
            elif self.mode == "sequential":
                self.weights, self.turn = weights, (index + 1) % self.clients
                self.in_turn.discard(index)
                if self.server is not None:
                    self.left[index] = copy.deepcopy(self.server).eval()
                self.save(steps)
                self.lock.notify_all()
                reply = torch.tensor(steps)
            else:
                self.pending[index] = (weights, samples, steps)
                this_round = self.round
                if len(self.pending) == self.clients:
                    total = sum(n for _, n, _ in self.pending.values())
                    # in client order, so that the average does not depend on which client ended first
                    self.weights = sum(self.pending[k][0] * (self.pending[k][1] / total) for k in sorted(self.pending))
                    client_steps = {k: self.pending[k][2] for k in sorted(self.pending)}
                    self.pending, self.round = {}, self.round + 1
                    self.save(sum(client_steps.values()), client_steps)
                    self.lock.notify_all()
                self._wait_until(lambda: self.round > this_round)
                reply = self.weights
        return reply

    def fail(self, reason: str) -> None:
        with self.lock:
            self.failed = reason
            self.lock.notify_all()


class Replay:
    """A SplitFed client's answered requests since the end of the round before its last one, so that the
    client can rejoin from its last checkpoint while the other clients go on: the steps it sends again
    are answered from here, the server's state untouched, so that each step is applied exactly once.
    A step sent again must be the one answered before (same message and labels, by digest); otherwise
    the client's computation is not reproducible (e.g. a defense drawing fresh noise) and it cannot
    rejoin. Two rounds are held, because a client killed after a round's end but before its own
    checkpoint of it resumes from the round before. Once they would exceed ``limit_bytes`` the log is
    dropped for good, and this client can no longer rejoin."""

    def __init__(self, first_step: int = 0, limit_bytes: int = 1 << 30):
        self.limit_bytes = limit_bytes
        self.round_ends = [first_step]  # the steps a checkpoint of this client may be at
        # training step -> (request digest, reply); a round's end is held under minus its last step
        self.answers: dict[int, tuple[str, tuple[torch.Tensor, ...]]] = {}
        self.held_bytes, self.full = 0, False

    @staticmethod
    def digest(*tensors: torch.Tensor) -> str:
        hashed = hashlib.sha256()
        for tensor in tensors:
            hashed.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
        return hashed.hexdigest()

    def answered(self, step: int, request: str, *reply: torch.Tensor) -> None:
        """Keep the reply to the request with digest ``request`` at ``step``."""
        self.held_bytes += sum(t.numel() * t.element_size() for t in reply)
        self.full = self.full or self.held_bytes > self.limit_bytes
        if self.full:
            self.answers = {}
        else:
            self.answers[step] = (request, tuple(t.detach().clone() for t in reply))

    def round_ended(self, step: int) -> None:
        self.round_ends = [*self.round_ends[-1:], step]
        self.answers = {k: v for k, v in self.answers.items() if abs(k) > self.round_ends[0]}
        self.held_bytes = sum(t.numel() * t.element_size() for _, reply in self.answers.values() for t in reply)

    def refusal(self, step) -> str | None:
        """Why the client cannot rejoin from a checkpoint after ``step``, or None."""
        if self.full:
            return (f"the server stopped holding this client's answers when two rounds of them exceeded "
                    f"{self.limit_bytes / 2 ** 20:.0f} MiB, so it cannot rejoin; start every party afresh")
        if step not in self.round_ends:
            return (f"the client resumes after training step {step!r}, but its last rounds ended after steps "
                    f"{self.round_ends} (its checkpoint of them was lost); start every party afresh")
        return None

    def held_after(self, step: int) -> int:
        """How many training steps after ``step`` are answered from the log."""
        return sum(1 for k in self.answers if k > step)

    def replayed(self, step: int, request: str) -> tuple[torch.Tensor, ...] | None:
        """The reply already given at ``step``, or None when the step is new."""
        if step not in self.answers:
            return None
        digest, reply = self.answers[step]
        if digest != request:
            what = f"step {step}" if step > 0 else f"the round's end after step {-step}"
            raise TransportError(f"{what} sent again differs from the one the server answered before: the client's "
                                 f"computation is not reproducible (a defense drawing fresh noise, e.g. dp_noise without "
                                 f"noise_seed, or other threads or a changed config), so it cannot rejoin a running "
                                 f"SplitFed round; start every party afresh")
        return reply


class ObservationRecord:
    """What the server observed, kept for ``splitpriv attack --observed``: the last epoch's training
    messages (at most ``limit``), their labels and the gradients returned for them, and the messages of
    the client's evaluation requests after its last epoch (its test pass, in the test set's order)."""

    def __init__(self, limit: int = 1024):
        self.limit = limit
        self.epoch: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.evaluated: list[torch.Tensor] = []

    def trained(self, message: torch.Tensor, labels: torch.Tensor, gradient: torch.Tensor) -> None:
        if sum(len(m) for m, _, _ in self.epoch) < self.limit:
            self.epoch.append((message.detach().clone(), labels.clone(), gradient.detach().clone()))

    def evaluation(self, message: torch.Tensor) -> None:
        self.evaluated.append(message.detach().clone())

    def epoch_end(self) -> None:
        self.kept, self.epoch, self.evaluated = self.epoch, [], []  # evaluations so far were validation passes

    def rewind(self) -> None:
        """The client rejoined from its last checkpoint: the epoch in progress will be sent again."""
        self.epoch, self.evaluated = [], []

    def save(self, path: Path, server: nn.Module) -> None:
        kept = self.kept or self.epoch
        if not kept or not self.evaluated:
            raise TransportError("nothing to record: the client ended before a training epoch and its test pass")
        record = {"train_messages": torch.cat([m for m, _, _ in kept])[: self.limit],
                  "train_labels": torch.cat([y for _, y, _ in kept])[: self.limit],
                  "returned_gradients": torch.cat([g for _, _, g in kept])[: self.limit],
                  "test_messages": torch.cat(self.evaluated), "server_state": server.state_dict()}
        temporary = path.with_name(f".{path.name}.tmp")
        torch.save(record, temporary)
        os.replace(temporary, path)


def serve_steps(link: Link, server: nn.Module, optimizer: torch.optim.Optimizer, message_shape: tuple[int, ...],
                num_classes: int, max_batch: int, rounds: Rounds, index: int = 0, state_size: int = 0,
                record: ObservationRecord | None = None, first_step: int = 0, round_ended=None,
                replay: Replay | None = None) -> int:
    """Answer one client's requests until it ends the run; returns the number of its last training step
    (``first_step``: the last one taken before, when the client resumed from a checkpoint;
    ``round_ended(index, step)``: told after each of its rounds ends).

    One training step is the server's half of :meth:`SplitLearningModule.training_step`, the same
    operations in the same order: ``loss = CE(server(message), y)``, backward, step, and the
    gradient w.r.t. the message goes back. Round boundaries go to ``rounds`` (``state_size``: the
    client partition's flat size, which several clients send there); ``record`` keeps what was observed;
    ``replay`` (SplitFed) keeps the answers, and answers from there the steps a rejoined client sends again.
    """
    expected_step = first_step
    while True:
        operation, step, dtype, shape = link.receive_header()
        if operation == END:
            return expected_step
        if operation == TURN:
            rounds.start(link, index)
            continue
        if operation == EPOCH_END:
            weights = samples = None
            if not rounds.partitions and shape:
                raise TransportError("a client sent its partition to a server whose clients average through a "
                                     "separate fed server; it must not see their weights: start every party with the "
                                     "same federation settings")
            if rounds.partitions:
                if dtype != torch.float64 or shape != (state_size,):
                    raise TransportError(f"epoch_end with a client partition of shape {list(shape)} and {dtype}; "
                                         f"expected [{state_size}] float64: do both parties run the same model and cut?")
                weights, samples = link.receive(shape, dtype), float(link.receive((), torch.float32))
            request = replay.digest(*([] if weights is None else [weights])) if replay else ""
            reply = replay and replay.replayed(-expected_step, request)
            if reply is None:
                reply = rounds.end(index, weights, samples, expected_step)
                if replay:
                    replay.answered(-expected_step, request, reply)
            else:
                reply, = reply
            link.send(reply)
            if replay:
                replay.round_ended(expected_step)
            if round_ended:
                round_ended(index, expected_step)
            if record:
                record.epoch_end()
            continue
        _check_message(operation, step, expected_step, dtype, shape, message_shape, max_batch)
        message = link.receive(shape, dtype)
        if operation == EVAL:
            with rounds.lock, torch.no_grad():
                evaluating = rounds.evaluating(index) or server
                evaluating.eval()
                logits = evaluating(message).float()
            link.send(logits)
            if record:
                record.evaluation(message)
            continue
        expected_step += 1
        labels = link.receive((shape[0],), torch.int64)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise TransportError(f"step {step}: labels outside [0, {num_classes}) received; the client's data set "
                                 f"does not match the server's model")
        request = replay.digest(message, labels) if replay else ""
        answer = replay and replay.replayed(expected_step, request)
        if answer is None:
            answer = _train_server(server, optimizer, message, labels, rounds.lock)
            if replay:
                replay.answered(expected_step, request, *answer)
        link.send(*answer)
        if record:
            record.trained(message, labels, answer[1])


def _train_server(server: nn.Module, optimizer: torch.optim.Optimizer, message: torch.Tensor, labels: torch.Tensor,
                  lock: threading.Condition) -> tuple[torch.Tensor, torch.Tensor]:
    """The server's half of a training step: (loss, compute time and logits as one tensor, the gradient
    w.r.t. the message)."""
    with lock:
        started = time.perf_counter()
        server.train()
        sent = message.requires_grad_(True)
        logits = server(sent)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        compute_s = time.perf_counter() - started
    head = torch.cat([loss.detach().float().reshape(1), torch.tensor([compute_s]), logits.detach().float().flatten()])
    return head, sent.grad


def average_rounds(link: Link, rounds: Rounds, index: int, state_size: int, replay: Replay | None = None) -> int:
    """SplitFed's fed server for one client: take its partition at each round's end, answer with the
    round's average (:class:`Rounds`), until it ends the run; returns the rounds it took part in. It
    answers nothing else: the fed server never sees a message, a label or a gradient. ``replay``: the
    averages given, which answer a rejoined client's round ends sent again."""
    taken = 0
    while True:
        operation, step, dtype, shape = link.receive_header()
        if operation == END:
            return taken
        if operation != EPOCH_END or dtype != torch.float64 or shape != (state_size,):
            raise TransportError(f"the fed server takes client partitions only ([{state_size}] float64 at each round's "
                                 f"end); client {index} sent {OPERATIONS[operation]} of shape {list(shape)} and {dtype}: "
                                 f"is it the fed server's address that the client was given as --server?")
        weights, samples = link.receive(shape, dtype), float(link.receive((), torch.float32))
        request = replay.digest(weights) if replay else ""
        average = replay and replay.replayed(-step, request)
        if average is None:
            average = (rounds.end(index, weights, samples, step),)
            if replay:
                replay.answered(-step, request, *average)
        link.send(*average)
        if replay:
            replay.round_ended(step)
        taken += 1


def _check_message(operation, step, expected_step, dtype, shape, message_shape, max_batch) -> None:
    name = OPERATIONS[operation]
    if operation == ERROR:
        raise TransportError("the client reported an error and stopped")
    wanted_step = expected_step + 1 if operation == TRAIN else expected_step
    if step != wanted_step:
        raise TransportError(f"{name} request with step {step}, expected step {wanted_step}: a step was lost or sent "
                             f"twice; restart the client from its last checkpoint")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TransportError(f"{name} request with a {dtype} message; a message is floating point")
    if len(shape) != 1 + len(message_shape) or tuple(shape[1:]) != tuple(message_shape) or not 1 <= shape[0] <= max_batch:
        raise TransportError(f"{name} request with a message of shape {list(shape)}; this server's cut expects "
                             f"[1..{max_batch}, {', '.join(map(str, message_shape))}]")
