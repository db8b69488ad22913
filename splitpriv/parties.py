"""The two parties of split learning as separate processes: ``splitpriv serve`` and ``splitpriv client``.

Both start from the same run config. Each builds the whole seeded model, as ``splitpriv train`` does,
and keeps its own partition: the server the layers after the cut, their optimizer and nothing of
the private data (it receives the messages and, as vanilla split learning sends them, the labels);
the client everything else (data, client partition, defenses, its optimizer, the run folder). The
split step is :class:`~splitpriv.training.SplitLearningModule`'s, with the server's half computed
by :func:`~splitpriv.transport.serve_steps` in the server's process.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import socket
import threading
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from splitpriv.config import RunConfig
from splitpriv.data import SplitData, make_splits
from splitpriv.errors import ConfigError, RunStateError, SplitprivError
from splitpriv.experiment import train
from splitpriv.runs import Run, build_module
from splitpriv.store import CHECKPOINT, read_checkpoint, read_tensors
from splitpriv.training import REMOTE_STEP, SplitLearningModule, make_optimizer
from splitpriv.transport import (MODES, TURN_WAIT_FACTOR, Link, ObservationRecord, PeerLost, RemoteServer, Replay,
                                 Rounds, Shaping, TransportError, accept_client, average_rounds, config_digest, flat_size,
                                 join_server, listen, open_store, parse_address, serve_steps)

SERVER_STATE, PREVIOUS_STATE, OBSERVED = "server.ckpt", "server.previous.ckpt", "observed.pt"


@dataclass(frozen=True)
class Federation:
    """How many clients train with one server, and how: ``splitpriv.transport.Rounds``. ``fed_server``:
    SplitFed's partitions are averaged by a separate fed server (``splitpriv federate``), so that the
    serve process never sees a client's weights (Thapa et al. 2022 keep the two apart)."""

    clients: int = 1
    mode: str = "splitfed"
    fed_server: bool = False

    def __post_init__(self):
        if not isinstance(self.clients, int) or self.clients < 1:
            raise ConfigError("--clients", self.clients, "an integer >= 1")
        if self.mode not in MODES:
            raise ConfigError("--federation", self.mode, f"one of {list(MODES)}")
        if self.fed_server and (self.clients < 2 or self.mode != "splitfed"):
            raise ConfigError("fed server", f"{self.clients} client(s), {self.mode}",
                              "--clients 2 or more with --federation splitfed: a fed server averages SplitFed's partitions")


def agreed_settings(cfg: RunConfig, federation: Federation) -> dict:
    """What client and server must share for the split to be the one ``splitpriv train`` computes."""
    training = asdict(cfg.training)
    return {"seed": cfg.seed, "model": asdict(cfg.model), "plugins": cfg.plugins, **asdict(federation),
            **{key: training[key] for key in ("epochs", "batch_size", "server_optimizer", "precision")}}


def client_shard(data: SplitData, index: int, clients: int) -> SplitData:
    """Client ``index`` of ``clients`` holds every ``clients``-th private training image from ``index``."""
    shard = torch.arange(index, len(data.private_train), clients)
    return dataclasses.replace(data, private_train=data.private_train.subset(shard))


def _check_supported(cfg: RunConfig) -> None:
    if cfg.exits.at:
        raise ConfigError("exits.at", cfg.exits.at, "[] with a remote server (internal classifiers across processes "
                          "are not supported yet; train them with 'splitpriv train')")


class ServerStates:
    """The server partition and its optimizer as they were after the client's last round ends, for a
    client that rejoins from its checkpoint. The last ``keep`` are held in memory: two, because a client
    killed after the server saved a round's end but before its own checkpoint of it resumes from the
    round before. The latest two are also on disk, for a serve process that is killed: the latest in
    ``path``, the one before in ``server.previous.ckpt`` beside it, each replaced atomically. Held by
    step, in the order saved (sequential clients' steps are each client's own, so not in order)."""

    def __init__(self, server: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path, keep: int = 2):
        self.server, self.optimizer, self.path, self.keep = server, optimizer, path, keep
        self.states: dict[int, dict] = {}
        self.latest: int | None = None

    def save(self, step: int, client_steps: dict[int, int] | None = None) -> None:
        """Save the state after training step ``step``; ``client_steps``: each client's last step then
        (several clients; one client's is ``step``)."""
        state = copy.deepcopy({"server": self.server.state_dict(), "optimizer": self.optimizer.state_dict(), "step": step})
        if client_steps is not None:
            state["client_steps"] = dict(client_steps)
        self.states.pop(step, None)
        self.states[step], self.latest = state, step
        while len(self.states) > self.keep:
            del self.states[next(iter(self.states))]
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        torch.save(state, temporary)
        if self.path.exists():
            os.replace(self.path, self.path.with_name(PREVIOUS_STATE))
        os.replace(temporary, self.path)

    def restore(self, step: int) -> None:
        # copies: the optimizer would otherwise update the held state's tensors in place
        state = copy.deepcopy(self.states[step])
        try:
            self.server.load_state_dict(state["server"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise RunStateError(f"the server's state at step {step} ({self.path}) does not fit this config's server "
                                f"partition ({' '.join(str(error).split())[:200]}); serve with the config it was "
                                f"saved with") from None

    def hold(self, states: dict[int, dict]) -> None:
        """Hold ``states`` (by step, read from a killed serve process's folder) instead of the current one."""
        self.states = dict(states)
        self.latest = next(reversed(self.states), None)

    def refusal(self, step) -> str | None:
        """Why a client that resumes after training step ``step`` cannot rejoin, or None."""
        if step in self.states:
            return None
        return (f"the client resumes after training step {step!r}, but this server holds its state after steps "
                f"{sorted(self.states)} only; resume the client from a checkpoint at one of them, or start both "
                f"afresh (the client with --force)")


@dataclass
class _Door:
    """Where clients join: the handshake on ``host:port``, then a Gloo link to each client admitted. It
    listens from its creation until :meth:`close` (``on_listening`` is called then, with the address)."""

    host: str
    port: int
    secret: bytes
    digest: str
    timeout_s: float
    shaping: Shaping | None
    on_listening: object = None
    listener: socket.socket = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.listener = listen(self.host, self.port)
        if self.on_listening:
            self.on_listening(self.listener.getsockname())

    def admit(self, validate) -> tuple[dict, Link]:
        """The next client that proves the secret and passes ``validate``: (its hello, the link to it)."""
        hello, store, address = accept_client(self.listener, self.secret, self.digest, self.timeout_s, validate)
        return hello, Link.connect(0, store, address, self.timeout_s, self.shaping)

    def close(self) -> None:
        self.listener.close()


def _server_party(cfg: RunConfig, hello: dict) -> tuple[SplitLearningModule, tuple[int, ...], int]:
    """The seeded model built from the client's description of its data: (module, message shape, classes)."""
    info = hello.get("dataset_info") or {}
    try:
        num_classes, in_channels, image_size = (int(info[k]) for k in ("num_classes", "in_channels", "image_size"))
    except (KeyError, TypeError, ValueError):
        raise SplitprivError(f"the client's hello lacks the data set's shape ({info!r})") from None
    module = build_module(cfg, num_classes, in_channels, image_size)
    message_shape = tuple(module.client.eval()(torch.zeros(1, in_channels, image_size, image_size)).shape[1:])
    return module, message_shape, num_classes


def serve(cfg: RunConfig, host: str, port: int, secret: bytes, out: str | Path, timeout_s: float = 120.0,
          on_listening=None, shaping: Shaping | None = None, federation: Federation = Federation(),
          record: bool = False, resume: bool = False) -> dict:
    """Serve the clients' training run: wait for ``federation.clients`` clients, then answer their steps
    (one thread per client, the server's computation one step at a time) until each ends the run.
    Writes ``<out>/server.ckpt`` (the server partition and its optimizer) at every round's end. A
    client that vanishes or stalls may rejoin within ``timeout_s`` from its last checkpoint
    (``splitpriv client --resume``): the server goes back to its state at that step (sequential: at the
    start of the interrupted turn; SplitFed: it answers the steps sent again from the client's
    :class:`~splitpriv.transport.Replay`). With ``record`` what the server observed of each client
    (:class:`~splitpriv.transport.ObservationRecord`): ``<out>/observed.pt`` with one client,
    ``<out>/observed-client<k>.pt`` for client k of several. ``resume``: start from ``<out>/server.ckpt``
    of a serve process that was killed, for clients that resume at the same step (SplitFed: the same
    round end). ``shaping`` emulates the link on the server's sends. Returns a summary (steps, where the
    state is)."""
    _check_supported(cfg)
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    digest = config_digest(agreed_settings(cfg, federation))
    folder = Path(out)
    saved = _saved_states(folder, federation) if resume else {}
    # each saved state's clients' last steps, where the clients must resume with it
    resumable = {key: state.get("client_steps", {0: state["step"]}) for key, state in saved.items()}

    def refusal_to_start(hello: dict) -> str | None:
        step, index = hello.get("resume_step", 0), hello.get("client_index", 0)
        starts = sorted({steps.get(index) for steps in resumable.values()}) if saved else [0]
        if step in starts:
            return None
        return (f"client {index} starts after training step {step!r}, this server after its step "
                f"{' or '.join(map(str, starts))} ({'its saved states' if saved else 'a fresh start'}); start "
                f"every party afresh (the clients with --force), or resume them all (serve --resume holds the "
                f"server's last two epoch ends)")

    door = _Door(host, port, secret, digest, timeout_s, shaping, on_listening)
    with closing(door):  # the clients rejoin through it until the last one ends
        joined = _admit_clients(door, federation.clients, refusal_to_start)
        module, message_shape, num_classes = _server_party(cfg, joined[0][1])
        server = module.server
        optimizer = make_optimizer(server.parameters(), cfg.training.server_optimizer)
        folder.mkdir(parents=True, exist_ok=True)
        states = ServerStates(server, optimizer, folder / SERVER_STATE)
        several = federation.clients > 1
        if saved:
            states.hold(saved)
            states.restore(_state_to_resume(resumable, joined))
        else:
            states.save(0, {index: 0 for index in joined} if several else None)
        rounds = Rounds(federation.clients, federation.mode, module.client, states.save, timeout_s * TURN_WAIT_FACTOR,
                        partitions=not federation.fed_server, server=server)
        observations = {index: ObservationRecord() for index in joined} if record else {}
        replays = _replays(joined, federation)
        steps: dict[int, int] = {}
        turn_ends = {index: hello.get("resume_step", 0) for index, (_, hello) in joined.items()}  # each client's last
        rejoining = threading.Lock()  # one door: clients rejoin one at a time

        def refusal(index: int, hello: dict) -> str | None:
            """Why client ``index`` cannot rejoin with ``hello`` (past the index check), or None."""
            step = hello.get("resume_step", 0)
            if federation.clients == 1:
                return states.refusal(step)
            if index in replays:
                return replays[index].refusal(step)
            if step != turn_ends[index]:
                return (f"client {index} resumes after training step {step!r}, but its last turn ended after step "
                        f"{turn_ends[index]} (its checkpoint of that turn was lost); start every party afresh")
            return None

        def rejoined(index: int, lost: PeerLost) -> tuple[Link, int]:
            """Client ``index`` vanished or stalled: wait for it to rejoin from its last checkpoint. One client:
            the server goes back to its state at that checkpoint's step. Sequential clients: to its state at
            the start of the lost client's turn (the others' steps are all before it). SplitFed: the server's
            state stays, and the steps the client sends again are answered from its replay log."""
            with rejoining:
                hello, link = _await_rejoin(door, index, lost, lambda hello: refusal(index, hello))
                step = hello.get("resume_step", 0)
                with rounds.lock:
                    if federation.clients == 1:
                        states.restore(step)
                    elif rounds.turn == index:  # lost in its turn: the steps of that turn are undone
                        states.restore(states.latest)
            if index in observations:
                observations[index].rewind()
            print(f"client {index} rejoined after training step {step}; " + (
                f"{replays[index].held_after(step)} step(s) it sends again are answered from the replay log"
                if index in replays else "the server's state is restored to the start of the steps it will send again"),
                flush=True)
            return link, step

        def turn_ended(index: int, step: int) -> None:
            turn_ends[index] = step

        def serve_one(index: int, link: Link) -> None:
            first_step = joined[index][1].get("resume_step", 0)
            while True:
                try:
                    steps[index] = serve_steps(link, server, optimizer, message_shape, num_classes,
                                               max(cfg.training.batch_size, 1024), rounds, index,
                                               flat_size(module.client), observations.get(index), first_step, turn_ended,
                                               replays.get(index))
                    return
                except PeerLost as lost:
                    link.close()
                    link, first_step = rejoined(index, lost)

        _for_each_client(joined, rounds, serve_one)
    states.save(sum(steps.values()), steps if several else None)
    recorded = [folder / record_name(index, federation.clients) for index in sorted(observations)]
    for index, path in zip(sorted(observations), recorded):
        observations[index].save(path, server)
    return {"steps": sum(steps.values()), "state": str(states.path), "cut_layer": module.cut_layer,
            "cut_name": module.cut_name, "clients": federation.clients,
            "observed": [str(path) for path in recorded]}


def federate(cfg: RunConfig, host: str, port: int, secret: bytes, federation: Federation, timeout_s: float = 120.0,
             on_listening=None) -> dict:
    """SplitFed's fed server: wait for ``federation.clients`` clients of ``cfg`` (the same secret and
    config as the serve process), then average their client partitions at every round's end
    (FedAvg, weighted by shard size) until each ends the run. It sees the partitions and nothing else;
    the serve process then sees no partition. Returns a summary (rounds, clients)."""
    if not federation.fed_server:
        raise ConfigError("fed server", federation, "Federation(clients >= 2, 'splitfed', fed_server=True)")

    def refusal(hello: dict) -> str | None:
        return "a fed server does not resume; start every party afresh" if hello.get("resume_step", 0) else None

    door = _Door(host, port, secret, config_digest(agreed_settings(cfg, federation)), timeout_s, None, on_listening)
    with closing(door):  # the clients rejoin through it until the last one ends
        joined = _admit_clients(door, federation.clients, refusal)
        client = _server_party(cfg, joined[0][1])[0].client
        rounds = Rounds(federation.clients, federation.mode, client, lambda *_: None, timeout_s * TURN_WAIT_FACTOR)
        replays, rejoining = _replays(joined, federation), threading.Lock()

        def average_one(index: int, link: Link) -> None:
            while True:
                try:
                    average_rounds(link, rounds, index, flat_size(client), replays[index])
                    return
                except PeerLost as lost:  # a rejoined client's round ends sent again are answered from its replay log
                    link.close()
                    with rejoining:
                        link = _await_rejoin(door, index, lost, lambda hello: replays[index].refusal(hello.get("resume_step", 0)))[1]

        _for_each_client(joined, rounds, average_one)
    return {"rounds": rounds.round, "clients": federation.clients}


def _replays(joined: dict[int, tuple[Link, dict]], federation: Federation) -> dict[int, Replay]:
    """SplitFed's clients' steps interleave in the server's state, which cannot go back for one of them: a
    rejoined client's steps sent again are answered from its replay log instead (one per client)."""
    if federation.clients == 1 or federation.mode != "splitfed":
        return {}
    return {index: Replay(hello.get("resume_step", 0)) for index, (_, hello) in joined.items()}


def _await_rejoin(door: _Door, index: int, lost: PeerLost, refusal) -> tuple[dict, Link]:
    """Client ``index`` was lost: the hello of, and the link to, the same client rejoining through ``door``
    from its last checkpoint (``refusal(hello)``: a further reason to refuse it, or None)."""
    print(f"client {index} was lost ({lost}); waiting {door.timeout_s:.0f} s for it to rejoin from its last "
          f"checkpoint ('splitpriv client ... --resume')", flush=True)

    def validate(hello: dict) -> str | None:
        if hello.get("client_index") != index:
            return f"client {index} is being waited for; client {hello.get('client_index')!r} has not been lost"
        return refusal(hello)

    try:
        return door.admit(validate)
    except TransportError as error:
        raise TransportError(f"client {index} was lost and did not rejoin: {error}") from None


def _admit_clients(door: _Door, clients: int, refusal) -> dict[int, tuple[Link, dict]]:
    """``clients`` clients admitted through ``door``, by index (each once): their links and hellos.
    ``refusal(hello)``: a further reason to refuse a client, or None."""
    joined: dict[int, tuple[Link, dict]] = {}

    def validate(hello: dict) -> str | None:
        index = hello.get("client_index")
        if not isinstance(index, int) or not 0 <= index < clients:
            return f"client index {index!r} is outside 0..{clients - 1}"
        return f"a client with index {index} has joined already" if index in joined else refusal(hello)

    while len(joined) < clients:
        hello, link = door.admit(validate)
        joined[hello["client_index"]] = (link, hello)
    return joined


def _for_each_client(joined: dict[int, tuple[Link, dict]], rounds: Rounds, work) -> None:
    """``work(index, link)`` for every client, each in its own thread. A failure ends the other clients'
    waits at the rounds, and the first one is raised once every thread has ended."""
    errors: list[BaseException] = []

    def run(index: int, link: Link) -> None:
        try:
            work(index, link)
        except Exception as error:  # noqa: BLE001 - reported below, after the other clients' threads end
            errors.append(error)
            rounds.fail(f"client {index}: {error}")

    threads = [threading.Thread(target=run, args=(index, link)) for index, (link, _) in sorted(joined.items())]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0] if isinstance(errors[0], SplitprivError) else TransportError(str(errors[0]))


def record_name(index: int, clients: int) -> str:
    """The file of what the server observed of client ``index``."""
    return OBSERVED if clients == 1 else f"observed-client{index}.pt"


def train_client(cfg: RunConfig, server_address: str, secret: bytes, timeout_s: float = 120.0,
                 shaping: Shaping | None = None, federation: Federation = Federation(), client_index: int = 0,
                 fed_server_address: str | None = None, **train_options) -> Run:
    """``splitpriv train`` with the server partition in the process at ``server_address``; ``shaping``
    emulates the link on the client's sends. With several clients this one trains on its shard of the
    private training set (:func:`client_shard`); with ``federation.fed_server`` its partition is
    averaged by the fed server at ``fed_server_address`` (``splitpriv federate``), not by the server."""
    _check_supported(cfg)
    if not 0 <= client_index < federation.clients:
        raise ConfigError("--client-index", client_index, f"0..{federation.clients - 1} (one of --clients)")
    if federation.fed_server != (fed_server_address is not None):
        raise ConfigError("--fed-server", fed_server_address, "the fed server's HOST:PORT exactly when the "
                          "partitions are averaged by one ('splitpriv federate')")
    resume_step = _checkpointed_step(cfg, federation) if train_options.get("resume") else 0
    host, port = parse_address(server_address)
    if cfg.training.num_threads:  # before the data: its normalisation's sums depend on the threads too
        torch.set_num_threads(cfg.training.num_threads)
    data = train_options.pop("data", None) or make_splits(cfg.data, cfg.seed)
    if federation.clients > 1:
        data = client_shard(data, client_index, federation.clients)

    def connect(module: SplitLearningModule, data: SplitData) -> RemoteServer:
        hello = {"config_digest": config_digest(agreed_settings(cfg, federation)), "dataset_info": asdict(data.info),
                 "client_index": client_index, "resume_step": resume_step}
        link = _join(host, port, secret, hello, timeout_s, shaping)
        fed_link = _join(*parse_address(fed_server_address), secret, hello, timeout_s, shaping) if fed_server_address else None
        return RemoteServer(link, data.info.num_classes, federation.clients, federation.mode, len(data.private_train),
                            resume_step, fed_link)

    return train(cfg, remote_server=connect, data=data, **train_options)


def _join(host: str, port: int, secret: bytes, hello: dict, timeout_s: float, shaping: Shaping | None) -> Link:
    """The client's link to the party at ``host:port``, after the handshake."""
    rendezvous, own_address = join_server(host, port, secret, hello, timeout_s)
    return Link.connect(1, open_store(host, rendezvous, 1, timeout_s), own_address, timeout_s, shaping)


def _state_to_resume(resumable: dict[int, dict[int, int]], joined: dict[int, tuple[Link, dict]]) -> int:
    """The key of the saved state at which every joined client resumes."""
    resuming = {index: hello.get("resume_step", 0) for index, (_, hello) in joined.items()}
    for key, steps in resumable.items():
        if steps == resuming:
            return key
    raise SplitprivError(f"the clients resume after steps {resuming} (by client), which no saved state of this server "
                         f"holds together ({list(resumable.values())}): they were checkpointed at different rounds; "
                         f"start every party afresh")


def _saved_states(folder: Path, federation: Federation) -> dict[int, dict]:
    """A killed serve process's last two states by step, read without running any code in the files."""
    if federation.clients > 1 and (federation.mode != "splitfed" or federation.fed_server):
        raise SplitprivError("serve --resume with several clients works with SplitFed's clients averaging through this "
                             "server only (not sequential clients, not a separate fed server) yet")
    if not (folder / SERVER_STATE).is_file():
        raise SplitprivError(f"cannot resume: no server state at {folder / SERVER_STATE}; serve with the same --out "
                             f"and --name as the serve process that was killed")
    states = {}
    for path in (folder / PREVIOUS_STATE, folder / SERVER_STATE):
        if path.is_file():
            state = read_tensors(path, "server state")
            if not (isinstance(state, dict) and isinstance(state.get("step"), int) and {"server", "optimizer"} <= set(state)):
                raise RunStateError(f"server state {path} was not written by 'splitpriv serve' (it has no step, server "
                                    f"or optimizer)")
            if federation.clients > 1 and set(state.get("client_steps") or {}) != set(range(federation.clients)):
                raise RunStateError(f"server state {path} was not saved by a serve process of {federation.clients} "
                                    f"SplitFed clients (its clients' steps are {state.get('client_steps')}); serve "
                                    f"--resume with the --clients it was saved with")
            states[state["step"]] = state
    return states


def _checkpointed_step(cfg: RunConfig, federation: Federation) -> int:
    """The last training step of the client's checkpoint, where the server must resume with it."""
    path = Path(cfg.out) / cfg.run_name() / CHECKPOINT
    if not path.is_file():
        raise SplitprivError(f"cannot resume: no checkpoint at {path} (no epoch had finished); start the client "
                             f"afresh with --force")
    step = read_checkpoint(path).get(REMOTE_STEP)
    if not isinstance(step, int):
        raise SplitprivError(f"cannot resume {path} against a server: it was not written by 'splitpriv client'")
    return step
