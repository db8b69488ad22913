"""The two parties of split learning as separate processes: ``splitpriv serve`` and ``splitpriv client``.

Both start from the same run config. Each builds the whole seeded model, as ``splitpriv train`` does,
and keeps its own partition: the server the layers after the cut, their optimizer and nothing of
the private data (it receives the messages and, as vanilla split learning sends them, the labels);
the client everything else (data, client partition, defenses, its optimizer, the run folder). The
split step is :class:`~splitpriv.training.SplitLearningModule`'s, with the server's half computed
by :func:`~splitpriv.transport.serve_steps` in the server's process.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from splitpriv.config import RunConfig
from splitpriv.data import SplitData
from splitpriv.errors import ConfigError, SplitprivError
from splitpriv.experiment import train
from splitpriv.runs import Run, build_module
from splitpriv.training import SplitLearningModule, make_optimizer
from splitpriv.transport import (Link, RemoteServer, Shaping, accept_client, config_digest, join_server, parse_address,
                                 serve_steps)

SERVER_STATE = "server.ckpt"


def agreed_settings(cfg: RunConfig) -> dict:
    """What client and server must share for the split to be the one ``splitpriv train`` computes."""
    training = asdict(cfg.training)
    return {"seed": cfg.seed, "model": asdict(cfg.model), "plugins": cfg.plugins,
            **{key: training[key] for key in ("epochs", "batch_size", "server_optimizer", "precision")}}


def _check_supported(cfg: RunConfig) -> None:
    if cfg.exits.at:
        raise ConfigError("exits.at", cfg.exits.at, "[] with a remote server (internal classifiers across processes "
                          "are not supported yet; train them with 'splitpriv train')")


def serve(cfg: RunConfig, host: str, port: int, secret: bytes, out: str | Path, timeout_s: float = 120.0,
          on_listening=None, shaping: Shaping | None = None) -> dict:
    """Serve one client's training run: wait for it, then answer its steps until it ends the run.
    Writes ``<out>/server.ckpt`` (the server partition and its optimizer) at every epoch's end.
    ``shaping`` emulates the link on the server's sends. Returns a summary (steps, where the state is)."""
    _check_supported(cfg)
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    hello, rendezvous, address = accept_client(host, port, secret, config_digest(agreed_settings(cfg)), timeout_s,
                                               on_listening)
    info = hello.get("dataset_info") or {}
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

    link = Link.connect(0, host, rendezvous, address, timeout_s, shaping)
    steps = serve_steps(link, server, optimizer, message_shape, num_classes, max(cfg.training.batch_size, 1024), save)
    save()
    return {"steps": steps, "state": str(state_path), "cut_layer": module.cut_layer, "cut_name": module.cut_name}


def train_client(cfg: RunConfig, server_address: str, secret: bytes, timeout_s: float = 120.0,
                 shaping: Shaping | None = None, **train_options) -> Run:
    """``splitpriv train`` with the server partition in the process at ``server_address``; ``shaping``
    emulates the link on the client's sends."""
    _check_supported(cfg)
    if train_options.get("resume"):
        raise SplitprivError("--resume with a remote server is not supported yet: the server's state would have "
                             "to resume at the same step; start the run afresh (--force)")
    host, port = parse_address(server_address)

    def connect(module: SplitLearningModule, data: SplitData) -> RemoteServer:
        hello = {"config_digest": config_digest(agreed_settings(cfg)), "dataset_info": asdict(data.info)}
        rendezvous, own_address = join_server(host, port, secret, hello, timeout_s)
        return RemoteServer(Link.connect(1, host, rendezvous, own_address, timeout_s, shaping), data.info.num_classes)

    return train(cfg, remote_server=connect, **train_options)
