"""The two parties of split learning as separate processes: ``splitpriv serve`` and ``splitpriv client``.

Both start from the same run config. Each builds the whole seeded model, as ``splitpriv train`` does,
and keeps its own partition: the server the layers after the cut, their optimizer and nothing of
the private data (it receives the messages and, as vanilla split learning sends them, the labels);
the client everything else (data, client partition, defenses, its optimizer, the run folder). The
split step is :class:`~splitpriv.training.SplitLearningModule`'s, with the server's half computed
by :func:`~splitpriv.transport.serve_steps` in the server's process.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from splitpriv.config import RunConfig
from splitpriv.data import SplitData, make_splits
from splitpriv.errors import ConfigError, SplitprivError
from splitpriv.experiment import train
from splitpriv.runs import Run, build_module
from splitpriv.training import SplitLearningModule, make_optimizer
from splitpriv.transport import (MODES, TURN_WAIT_FACTOR, Link, ObservationRecord, RemoteServer, Rounds, Shaping,
                                 TransportError,
                                 accept_client, config_digest, flat_size, join_server, parse_address, serve_steps)

SERVER_STATE, OBSERVED = "server.ckpt", "observed.pt"


@dataclass(frozen=True)
class Federation:
    """How many clients train with one server, and how: ``splitpriv.transport.Rounds``."""

    clients: int = 1
    mode: str = "splitfed"

    def __post_init__(self):
        if not isinstance(self.clients, int) or self.clients < 1:
            raise ConfigError("--clients", self.clients, "an integer >= 1")
        if self.mode not in MODES:
            raise ConfigError("--federation", self.mode, f"one of {list(MODES)}")


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


def serve(cfg: RunConfig, host: str, port: int, secret: bytes, out: str | Path, timeout_s: float = 120.0,
          on_listening=None, shaping: Shaping | None = None, federation: Federation = Federation(),
          record: bool = False) -> dict:
    """Serve the clients' training run: wait for ``federation.clients`` clients, then answer their steps
    (one thread per client, the server's computation one step at a time) until each ends the run.
    Writes ``<out>/server.ckpt`` (the server partition and its optimizer) at every round's end, and with
    ``record`` ``<out>/observed.pt`` (:class:`~splitpriv.transport.ObservationRecord`, one client only).
    ``shaping`` emulates the link on the server's sends. Returns a summary (steps, where the state is)."""
    _check_supported(cfg)
    if record and federation.clients > 1:
        raise ConfigError("--record", True, "one client only (a record holds one client's messages)")
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    digest = config_digest(agreed_settings(cfg, federation))
    joined: dict[int, tuple[Link, dict]] = {}

    def validate(hello: dict) -> str | None:
        index = hello.get("client_index")
        if not isinstance(index, int) or not 0 <= index < federation.clients:
            return f"client index {index!r} is outside 0..{federation.clients - 1}"
        return f"a client with index {index} has joined already" if index in joined else None

    while len(joined) < federation.clients:
        hello, rendezvous, address = accept_client(host, port, secret, digest, timeout_s, on_listening, validate)
        on_listening = None
        joined[hello["client_index"]] = (Link.connect(0, host, rendezvous, address, timeout_s, shaping), hello)
    info = joined[0][1].get("dataset_info") or {}
    try:
        num_classes, in_channels, image_size = (int(info[k]) for k in ("num_classes", "in_channels", "image_size"))
    except (KeyError, TypeError, ValueError):
        raise SplitprivError(f"the client's hello lacks the data set's shape ({info!r})") from None
    module = build_module(cfg, num_classes, in_channels, image_size)
    message_shape = tuple(module.client.eval()(torch.zeros(1, in_channels, image_size, image_size)).shape[1:])
    server = module.server
    optimizer = make_optimizer(server.parameters(), cfg.training.server_optimizer)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / SERVER_STATE

    def save() -> None:
        temporary = state_path.with_name(f".{SERVER_STATE}.tmp")
        torch.save({"server": server.state_dict(), "optimizer": optimizer.state_dict()}, temporary)
        os.replace(temporary, state_path)

    rounds = Rounds(federation.clients, federation.mode, module.client, save, timeout_s * TURN_WAIT_FACTOR)
    observation = ObservationRecord() if record else None
    steps: dict[int, int] = {}
    errors: list[BaseException] = []

    def serve_one(index: int, link: Link) -> None:
        try:
            steps[index] = serve_steps(link, server, optimizer, message_shape, num_classes,
                                       max(cfg.training.batch_size, 1024), rounds, index, flat_size(module.client),
                                       observation)
        except Exception as error:  # noqa: BLE001 - reported below, after the other clients' threads end
            errors.append(error)
            rounds.fail(f"client {index}: {error}")

    threads = [threading.Thread(target=serve_one, args=(index, link)) for index, (link, _) in sorted(joined.items())]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0] if isinstance(errors[0], SplitprivError) else TransportError(str(errors[0]))
    save()
    if observation:
        observation.save(folder / OBSERVED, server)
    return {"steps": sum(steps.values()), "state": str(state_path), "cut_layer": module.cut_layer,
            "cut_name": module.cut_name, "clients": federation.clients,
            "observed": str(folder / OBSERVED) if observation else None}


def train_client(cfg: RunConfig, server_address: str, secret: bytes, timeout_s: float = 120.0,
                 shaping: Shaping | None = None, federation: Federation = Federation(), client_index: int = 0,
                 **train_options) -> Run:
    """``splitpriv train`` with the server partition in the process at ``server_address``; ``shaping``
    emulates the link on the client's sends. With several clients this one trains on its shard of the
    private training set (:func:`client_shard`)."""
    _check_supported(cfg)
    if train_options.get("resume"):
        raise SplitprivError("--resume with a remote server is not supported yet: the server's state would have "
                             "to resume at the same step; start the run afresh (--force)")
    if not 0 <= client_index < federation.clients:
        raise ConfigError("--client-index", client_index, f"0..{federation.clients - 1} (one of --clients)")
    host, port = parse_address(server_address)
    data = train_options.pop("data", None) or make_splits(cfg.data, cfg.seed)
    if federation.clients > 1:
        data = client_shard(data, client_index, federation.clients)

    def connect(module: SplitLearningModule, data: SplitData) -> RemoteServer:
        hello = {"config_digest": config_digest(agreed_settings(cfg, federation)), "dataset_info": asdict(data.info),
                 "client_index": client_index}
        rendezvous, own_address = join_server(host, port, secret, hello, timeout_s)
        link = Link.connect(1, host, rendezvous, own_address, timeout_s, shaping)
        return RemoteServer(link, data.info.num_classes, federation.clients, federation.mode, len(data.private_train))

    return train(cfg, remote_server=connect, data=data, **train_options)
