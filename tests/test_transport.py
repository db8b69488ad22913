"""Client and server as separate processes (``splitpriv serve`` / ``splitpriv client``) over Gloo on loopback."""
from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from splitpriv.cli import main
from splitpriv.config import load_run_config
from splitpriv.errors import SplitprivError
from splitpriv.experiment import train
from splitpriv.runs import load_run
from conftest import checkpoint_epoch, wait_for
from splitpriv.data import make_splits
from splitpriv.parties import PREVIOUS_STATE, SERVER_STATE, ServerStates, client_shard, train_client
from splitpriv.store import read_checkpoint
from splitpriv.transport import (Link, Shaping, TransportError, _check_message, accept_client, free_port, join_server,
                                 listen)

SECRET = "a-test-secret-of-32-characters!!"
TRAINING = ["--epochs", "2", "--threads", "1", "--seed", "3"]



def _serve(tmp_path: Path, port: int, *flags: str, secret: str = SECRET, timeout: float = 60) -> subprocess.Popen:
    """``splitpriv serve`` in its own process, listening on 127.0.0.1:port."""
    environment = {**os.environ, "SPLITPRIV_SECRET": secret, "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "splitpriv.cli", "serve", "--out", str(tmp_path), "--port", str(port),
                             "--timeout", str(timeout), *TRAINING, *flags], env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(server: subprocess.Popen) -> tuple[int, str]:
    out, err = server.communicate(timeout=120)
    return server.returncode, out + err


def test_training_over_an_emulated_link_equals_in_process_training_bit_for_bit(tmp_path):
    """Both parties shape their sends as a 16 Mbit/s link with a 20 ms round trip: slower, the same numbers."""
    port = free_port()
    server = _serve(tmp_path, port, "--bandwidth-mbps", "16", "--rtt-ms", "20")
    overrides = {"out": str(tmp_path), "training.progress_bar": False, "training.epochs": 2, "training.num_threads": 1,
                 "seed": 3}
    link = Shaping(16e6 / 8, 0.020)
    remote = train_client(load_run_config(None, {**overrides, "name": "remote"}), f"127.0.0.1:{port}", SECRET.encode(), 60,
                          link)
    code, output = _finish(server)
    assert code == 0, output
    local = train(load_run_config(None, {**overrides, "name": "local"}))

    for key in ("test_accuracy", "test_loss", "activation_bytes_per_sample"):
        assert remote.metrics[key] == local.metrics[key], key
    client_state = read_checkpoint(remote.path / "checkpoints" / "last.ckpt")["state_dict"]
    assert not any(key.startswith("server.") for key in client_state)  # the client never holds the server's weights
    for key, value in client_state.items():
        assert torch.equal(value, local.module.state_dict()[key]), key
    with pytest.raises(SplitprivError, match="trained with 'splitpriv client'"):
        load_run(remote.path)
    server_state = torch.load(next(tmp_path.glob(f"*-server/{SERVER_STATE}")), weights_only=True)["server"]
    for key, value in server_state.items():
        assert torch.equal(value, local.module.server.state_dict()[key]), key
    # what crossed the wire per step: the message and the labels forward, the gradient back
    batch = local.config.training.batch_size
    assert remote.metrics["wire_backward_bytes_per_step"] <= batch * local.metrics["gradient_bytes_per_sample"]
    assert remote.metrics["wire_forward_bytes_per_step"] == pytest.approx(
        remote.metrics["wire_backward_bytes_per_step"] * (1 + 8 / local.metrics["activation_bytes_per_sample"]))
    assert 0 < remote.metrics["server_compute_s_per_step"] < remote.metrics["wire_round_trip_s_per_step"]
    assert remote.metrics["training_step_s"] > remote.metrics["wire_round_trip_s_per_step"]  # the client's part too
    # the emulated link costs at least what the latency model charges a training step's crossing
    bytes_per_step = remote.metrics["wire_forward_bytes_per_step"] + remote.metrics["wire_backward_bytes_per_step"]
    assert remote.metrics["wire_time_s_per_step"] >= link.rtt_s + bytes_per_step / link.bandwidth_bytes_per_s



def test_a_killed_client_rejoins_and_a_killed_server_resumes_as_if_never_interrupted(tmp_path):
    """SIGKILL the client after its first epoch and start it again with --resume: the serve process goes
    back to its state at that checkpoint's step. Then SIGKILL the serve process after the next epoch
    and start both again with --resume. Both parties end bit for bit where an uninterrupted
    ``splitpriv train`` ends: no step lost, none applied twice."""
    port = free_port()
    environment = {**os.environ, "SPLITPRIV_SECRET": SECRET, "WANDB_MODE": "disabled"}
    # the emulated 60 ms round trip slows each step, so that the kills land before the last epoch
    client = [sys.executable, "-m", "splitpriv.cli", "client", "--out", str(tmp_path), "--name", "remote", "--server",
              f"127.0.0.1:{port}", "--no-progress", *TRAINING, "--epochs", "4", "--rtt-ms", "60"]
    checkpoint = tmp_path / "remote" / "checkpoints" / "last.ckpt"

    def start_client(*flags: str) -> subprocess.Popen:
        return subprocess.Popen([*client, *flags], env=environment, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def kill_after_epoch(process: subprocess.Popen, watched: subprocess.Popen, epoch: int) -> None:
        wait_for(lambda: checkpoint_epoch(checkpoint) >= epoch or watched.poll() is not None)
        process.kill()
        process.wait()
        assert not (tmp_path / "remote" / "metrics.json").exists(), "the client finished before the kill"

    server = _serve(tmp_path, port, "--epochs", "4")
    first = start_client()
    kill_after_epoch(first, first, 0)
    second = start_client("--resume")
    kill_after_epoch(server, second, 1)
    _, errors = second.communicate(timeout=120)
    assert second.returncode == 2 and "vanished or stalled" in errors and "Traceback" not in errors, errors[-2000:]
    code, output = _finish(server)
    assert "client 0 rejoined after training step" in output
    assert checkpoint_epoch(checkpoint) < 3

    server = _serve(tmp_path, port, "--epochs", "4", "--resume")
    third = start_client("--resume")
    _, errors = third.communicate(timeout=300)
    assert third.returncode == 0, errors[-2000:]
    code, output = _finish(server)
    assert code == 0, output

    # the same run as one process
    subprocess.run([sys.executable, "-m", "splitpriv.cli", "train", "--out", str(tmp_path), "--name", "local",
                    "--no-progress", *TRAINING, "--epochs", "4"], env=environment, check=True, capture_output=True)
    local_state = read_checkpoint(tmp_path / "local" / "checkpoints" / "last.ckpt")["state_dict"]
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("remote", "local")]
    assert metrics[0]["test_loss"] == metrics[1]["test_loss"] and metrics[0]["epochs"] == 4
    server_state = torch.load(next(tmp_path.glob(f"*-server/{SERVER_STATE}")), weights_only=True)["server"]
    for key, value in read_checkpoint(checkpoint)["state_dict"].items():
        assert torch.equal(value, local_state[key]), key
    for key, value in server_state.items():
        assert torch.equal(value, local_state[f"server.{key}"]), key
    assert int(output.split("served ")[1].split()[0]) == -(-_shard_sizes(1)[0] // 64) * 4  # each step once


def test_server_states_hold_the_last_two_round_ends_and_restore_them_untouched(tmp_path):
    """Restoring a state, then training on, leaves the held state as it was: a second rejoin at the same
    step starts from the same numbers. Older states are dropped and a rejoin there is refused by name."""
    torch.manual_seed(0)
    server = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(server.parameters(), lr=0.1)
    path = tmp_path / SERVER_STATE

    def train_steps(count: int) -> None:
        for _ in range(count):
            optimizer.zero_grad()
            server(torch.randn(4, 3)).square().sum().backward()
            optimizer.step()

    states = ServerStates(server, optimizer, path)
    for step in (0, 5, 10):
        train_steps(5 if step else 0)
        states.save(step)
    after_ten = [p.detach().clone() for p in server.parameters()]
    train_steps(3)
    outcomes = []
    for _ in range(2):
        states.restore(10)
        assert all(torch.equal(p, q) for p, q in zip(server.parameters(), after_ten))
        torch.manual_seed(1)
        train_steps(3)
        outcomes.append([p.detach().clone() for p in server.parameters()])
    assert all(torch.equal(p, q) for p, q in zip(*outcomes))
    assert states.refusal(5) is None and states.refusal(10) is None
    assert "after steps [5, 10] only" in states.refusal(0)
    assert [torch.load(tmp_path / name, weights_only=True)["step"] for name in (PREVIOUS_STATE, SERVER_STATE)] == [5, 10]


def test_a_client_without_the_secret_is_refused_before_any_tensor(tmp_path, capsys):
    port = free_port()
    server = _serve(tmp_path, port, timeout=8)
    os.environ["SPLITPRIV_SECRET"] = "another-secret-of-32-characters"
    try:
        code = main(["client", "--out", str(tmp_path), "--server", f"127.0.0.1:{port}", "--no-progress", *TRAINING])
    finally:
        del os.environ["SPLITPRIV_SECRET"]
    assert code == 2
    assert "refused this client: wrong shared secret" in capsys.readouterr().err
    code, output = _finish(server)  # it keeps waiting for a client that knows the secret, then gives up
    assert code == 2 and "refused a client from 127.0.0.1: wrong shared secret" in output
    assert "no client connected" in output and "Traceback" not in output
    assert not list(tmp_path.glob(f"*-server/{SERVER_STATE}"))


def test_a_client_with_another_config_is_refused(tmp_path, capsys):
    port = free_port()
    server = _serve(tmp_path, port, timeout=8)
    os.environ["SPLITPRIV_SECRET"] = SECRET
    try:
        code = main(["client", "--out", str(tmp_path), "--server", f"127.0.0.1:{port}", "--no-progress", *TRAINING,
                     "--cut-layer", "relu1"])
    finally:
        del os.environ["SPLITPRIV_SECRET"]
    assert code == 2 and "run config differs" in capsys.readouterr().err
    server.kill()
    server.communicate()


def test_missing_or_short_secret_and_absent_server_are_one_message_each(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SPLITPRIV_SECRET", raising=False)
    assert main(["serve", "--out", str(tmp_path)]) == 2
    assert "shared secret of at least 16 characters" in capsys.readouterr().err
    monkeypatch.setenv("SPLITPRIV_SECRET", SECRET)
    assert main(["client", "--out", str(tmp_path), "--server", f"127.0.0.1:{free_port()}", "--timeout", "1",
                 "--no-progress"]) == 2
    assert "cannot reach the server" in capsys.readouterr().err
    assert main(["client", "--out", str(tmp_path), "--server", "no-port-here:x"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_a_tcp_self_connection_counts_as_no_server_yet(monkeypatch):
    """Connecting to a local port nobody listens on can connect the socket to itself (the kernel may choose
    that port as its own): the client must take it as no server yet, not wait for a challenge from itself."""
    import splitpriv.transport as transport

    def self_connected(address, timeout=None):
        connection = socket.socket()
        connection.bind(("127.0.0.1", 0))
        connection.connect(connection.getsockname())  # TCP simultaneous open with itself
        connection.settimeout(timeout)
        return connection

    monkeypatch.setattr(transport.socket, "create_connection", self_connected)
    started = time.monotonic()
    with pytest.raises(TransportError, match="cannot reach the server"):
        transport.join_server("127.0.0.1", free_port(), SECRET.encode(), {}, 1)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("operation, step, dtype, shape, wanted", [
    (1, 5, torch.float32, (4, 32, 4, 4), "expected step 1"),  # a step lost or replayed
    (1, 1, torch.int64, (4, 32, 4, 4), "floating point"),
    (1, 1, torch.float32, (4, 16, 4, 4), "expects \\[1..64, 32, 4, 4\\]"),
    (2, 0, torch.float32, (65, 32, 4, 4), "expects"),  # a batch beyond the limit
])
def test_the_server_refuses_an_unexpected_message(operation, step, dtype, shape, wanted):
    with pytest.raises(TransportError, match=wanted):
        _check_message(operation, step, 0, dtype, shape, (32, 4, 4), 64)


def _join_in_thread(port: int, index: int, results: dict) -> threading.Thread:
    def join() -> None:
        try:
            results[index] = join_server("127.0.0.1", port, SECRET.encode(), {"config_digest": "d", "client_index": index}, 30)
        except Exception as error:  # noqa: BLE001 - the test reports it
            results[index] = error

    thread = threading.Thread(target=join)
    thread.start()
    return thread


def test_a_client_that_connects_between_two_admissions_is_queued_not_refused():
    """The server admits one client, then is busy with it (the Gloo rendezvous) while another connects:
    that connection waits in the listening socket's queue and gets the challenge at the next admission,
    rather than being refused or reset."""
    results: dict = {}
    with listen("127.0.0.1", 0) as listener:
        port = listener.getsockname()[1]
        thread = _join_in_thread(port, 0, results)
        accept_client(listener, SECRET.encode(), "d", 30)
        thread.join(30)
        assert isinstance(results[0], tuple), results
        with socket.create_connection(("127.0.0.1", port), timeout=5) as queued:  # while no admission runs
            time.sleep(0.5)
            admission = threading.Thread(target=lambda: results.update(
                next=pytest.raises(TransportError, accept_client, listener, SECRET.encode(), "d", 2)))
            admission.start()
            assert len(queued.recv(4)) == 4, "the queued connection got no challenge"
        admission.join(30)
    assert "no client connected" in str(results["next"].value)


def test_a_client_whose_connection_is_reset_before_the_challenge_connects_again():
    """A server that resets the first connection (as a listening socket closed under a queued connection
    does) and admits the second: the client joins; nothing was sent before the challenge."""
    results: dict = {}
    with listen("127.0.0.1", 0) as listener:
        thread = _join_in_thread(listener.getsockname()[1], 0, results)
        listener.settimeout(30)
        connection, _ = listener.accept()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()  # linger 0: the client reads a reset
        hello, *_ = accept_client(listener, SECRET.encode(), "d", 30)
        thread.join(30)
    assert hello["client_index"] == 0 and isinstance(results[0], tuple), results


@pytest.mark.parametrize("then", ["time.sleep(30)", "os._exit(0)"], ids=["stalls", "vanishes"])
def test_a_peer_that_stalls_or_vanishes_is_an_error_within_the_timeout(then):
    """A client joins the link, then sends nothing or dies: the server's wait ends with a message."""
    port = free_port()
    client = f"""
import os, time
from splitpriv.transport import Link, join_server, open_store
rendezvous, own = join_server("127.0.0.1", {port}, {SECRET!r}.encode(), {{"config_digest": "d", "dataset_info": {{}}}}, 90)
link = Link.connect(1, open_store("127.0.0.1", rendezvous, 1, 20), own, 20)
{then}
"""
    child = subprocess.Popen([sys.executable, "-c", client])
    try:
        with listen("127.0.0.1", port) as listener:
            _, store, address = accept_client(listener, SECRET.encode(), "d", 90)
        with pytest.raises(OSError), socket.create_server(("127.0.0.1", store.port)):
            pass  # the rendezvous port was held from before the client heard of it: no other process can take it
        link = Link.connect(0, store, address, 3)
        started = time.monotonic()
        with pytest.raises(TransportError, match="vanished or stalled for more than 3 s"):
            link.receive_header()
        assert time.monotonic() - started < 10
        if "exit" in then:  # a send to a closed peer fails as it starts: the same error, not Gloo's own
            with pytest.raises(TransportError, match="sending the client failed"):
                link.send(torch.zeros(1 << 20))
    finally:
        child.kill()
        child.communicate()


def _client_process(tmp_path: Path, port: int, index: int, mode: str, epochs: str, *flags: str) -> subprocess.Popen:
    environment = {**os.environ, "SPLITPRIV_SECRET": SECRET, "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "splitpriv.cli", "client", "--out", str(tmp_path), "--name", f"c{index}",
                             "--server", f"127.0.0.1:{port}", "--clients", "2", "--federation", mode, "--client-index",
                             str(index), "--no-progress", "--threads", "1", "--seed", "3", "--epochs", epochs, *flags],
                            env=environment, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _federate(tmp_path: Path, port: int, epochs: str) -> subprocess.Popen:
    """``splitpriv federate`` for two clients in its own process, listening on 127.0.0.1:port."""
    return subprocess.Popen([sys.executable, "-m", "splitpriv.cli", "federate", "--out", str(tmp_path), "--port",
                             str(port), *TRAINING, "--epochs", epochs], env={**os.environ, "SPLITPRIV_SECRET": SECRET},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_and_resume_client_1(client: subprocess.Popen, out: Path, port: int, mode: str, flags: list[str],
                              settle_s: float = 0.0) -> subprocess.Popen:
    """SIGKILL client 1 ``settle_s`` after its first checkpoint, then start it again with --resume."""
    wait_for(lambda: checkpoint_epoch(out / "c1" / "checkpoints" / "last.ckpt") >= 0 or client.poll() is not None)
    time.sleep(settle_s)
    client.kill()
    client.wait()
    assert not (out / "c1" / "metrics.json").exists(), "client 1 finished before the kill"
    return _client_process(out, port, 1, mode, "3", *flags, "--resume")


def _assert_each_step_applied_once_and_one_partition(out: Path, steps: int) -> None:
    """The server's optimizer took ``steps`` steps (none lost, none twice); both SplitFed clients test alike."""
    optimizer = torch.load(next(out.glob(f"*-server/{SERVER_STATE}")), weights_only=True)["optimizer"]
    assert {int(state["step"]) for state in optimizer["state"].values()} == {steps}
    metrics = [json.loads((out / f"c{index}" / "metrics.json").read_text()) for index in (0, 1)]
    assert metrics[0]["test_loss"] == metrics[1]["test_loss"]


@pytest.mark.parametrize("mode, fed_server", [("splitfed", False), ("splitfed", True), ("sequential", False)],
                         ids=["splitfed", "splitfed-fed-server", "sequential"])
def test_two_clients_train_digits_with_one_server(tmp_path, mode, fed_server):
    """SplitFed: both clients end with the same averaged partition, so they test identically, whether
    the server or a separate fed server averages it (then the server never receives a partition: it
    refuses one). Sequential: the partition passes from client to client; the last one to train holds
    the model. The server's record of each client holds that client's last epoch and test pass, no other's."""
    port, fed_port = free_port(), free_port()
    server = _serve(tmp_path, port, "--clients", "2", "--federation", mode, "--epochs", "4", "--record",
                    *(["--separate-fed-server"] if fed_server else []))
    fed = _federate(tmp_path, fed_port, "4") if fed_server else None
    flags = ["--fed-server", f"127.0.0.1:{fed_port}"] if fed_server else []
    clients = [_client_process(tmp_path, port, index, mode, "4", *flags) for index in (0, 1)]
    for process in clients:
        out, err = process.communicate(timeout=300)
        if process.returncode != 0:
            server.kill()
            pytest.fail(f"client: {err[-2000:]}\nserver: {''.join(server.communicate())[-3000:]}")
    code, output = _finish(server)
    assert code == 0, output
    if fed:
        code, fed_output = _finish(fed)
        assert code == 0 and "averaged 4 rounds of 2 clients' partitions" in fed_output, fed_output
    metrics = [json.loads((tmp_path / f"c{index}" / "metrics.json").read_text()) for index in (0, 1)]
    served_steps = int(output.split("served ")[1].split()[0])
    steps_per_client = [-(-len_ // 64) * 4 for len_ in _shard_sizes(2)]
    assert served_steps == sum(steps_per_client)  # every step of both shards, none twice
    data = _data(3)
    for index in (0, 1):
        record = torch.load(next(tmp_path.glob(f"*-server/observed-client{index}.pt")), weights_only=True)
        shard_labels = client_shard(data, index, 2).private_train.labels
        assert torch.equal(record["train_labels"].sort().values, shard_labels.sort().values)
        assert len(record["test_messages"]) == len(data.private_test)
    if mode == "splitfed":
        assert metrics[0]["test_loss"] == metrics[1]["test_loss"]
        assert metrics[0]["test_accuracy"] >= 0.8
    else:
        assert max(m["test_accuracy"] for m in metrics) >= 0.8


def test_a_killed_sequential_client_rejoins_and_the_run_ends_as_if_never_interrupted(tmp_path):
    """Sequential split learning, two clients: SIGKILL client 1 once its first turn is checkpointed (in
    or before its second turn) and start it again with --resume. The server undoes the steps of the
    interrupted turn; both clients and the server end bit for bit where an uninterrupted run ends."""
    runs = {}
    for interrupted in (True, False):
        out = tmp_path / ("interrupted" if interrupted else "uninterrupted")
        port = free_port()
        server = _serve(out, port, "--clients", "2", "--federation", "sequential", "--epochs", "3")
        # slower steps, so that the kill lands before client 1 ends its next turn (a checkpoint that misses its
        # last turn is refused by design)
        flags = ["--rtt-ms", "150"] if interrupted else []
        clients = [_client_process(out, port, index, "sequential", "3", *flags) for index in (0, 1)]
        if interrupted:
            clients[1] = _kill_and_resume_client_1(clients[1], out, port, "sequential", flags)
        for process in clients:
            _, errors = process.communicate(timeout=300)
            assert process.returncode == 0, errors[-2000:]
        code, output = _finish(server)
        assert code == 0, output
        assert ("client 1 rejoined after training step" in output) == interrupted, output
        runs[interrupted] = out
    for name in ("c0", "c1"):
        states = [read_checkpoint(runs[flag] / name / "checkpoints" / "last.ckpt")["state_dict"] for flag in (True, False)]
        assert all(torch.equal(value, states[1][key]) for key, value in states[0].items()), name
        metrics = [json.loads((runs[flag] / name / "metrics.json").read_text()) for flag in (True, False)]
        assert metrics[0]["test_loss"] == metrics[1]["test_loss"], name
    servers = [torch.load(next(runs[flag].glob(f"*-server/{SERVER_STATE}")), weights_only=True)["server"] for flag in (True, False)]
    assert all(torch.equal(value, servers[1][key]) for key, value in servers[0].items())


@pytest.mark.parametrize("fed_server", [False, True], ids=["server-averages", "fed-server"])
def test_a_killed_splitfed_client_rejoins_and_every_step_is_applied_once(tmp_path, fed_server):
    """SplitFed, two clients: SIGKILL client 1 once its first round is checkpointed and start it again
    with --resume while client 0 goes on. The server keeps its state and answers the steps client 1
    sends again from its replay log (and so does a separate fed server for the round ends): the
    server's optimizer took exactly one step per training step of both shards, and both clients end
    with the same averaged partition."""
    port, fed_port = free_port(), free_port()
    server = _serve(tmp_path, port, "--clients", "2", "--federation", "splitfed", "--epochs", "3",
                    *(["--separate-fed-server"] if fed_server else []))
    fed = _federate(tmp_path, fed_port, "3") if fed_server else None
    # slower steps, so that the kill lands inside a round
    flags = ["--rtt-ms", "150", *(["--fed-server", f"127.0.0.1:{fed_port}"] if fed_server else [])]
    clients = [_client_process(tmp_path, port, index, "splitfed", "3", *flags) for index in (0, 1)]
    clients[1] = _kill_and_resume_client_1(clients[1], tmp_path, port, "splitfed", flags, settle_s=0.5)
    for process in clients:
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors[-2000:]
    code, output = _finish(server)
    assert code == 0, output
    replayed = re.search(r"client 1 rejoined after training step \d+; (\d+) step\(s\) it sends again are answered", output)
    assert replayed and int(replayed.group(1)) >= 1, output
    if fed:
        code, fed_output = _finish(fed)
        assert code == 0 and "averaged 3 rounds of 2 clients' partitions" in fed_output, fed_output
        assert "client 1 was lost" in fed_output
    steps = sum(-(-size // 64) * 3 for size in _shard_sizes(2))
    assert int(output.split("served ")[1].split()[0]) == steps
    _assert_each_step_applied_once_and_one_partition(tmp_path, steps)


def test_a_killed_serve_process_resumes_with_its_splitfed_clients(tmp_path):
    """SplitFed, two clients: SIGKILL the serve process inside the second round; both clients end with a
    message. Start all three again with --resume: the server goes back to the round end both clients'
    checkpoints hold, each step is applied once, and both clients end with the same partition."""
    port = free_port()
    # slower steps (a client's send waits rtt / 2, so a round takes at least 9 x 0.2 s), so that the kill lands well
    # inside the second round: a kill at its very end may leave the clients' checkpoints at different rounds, which
    # is refused by design
    flags = ["--rtt-ms", "400"]
    server = _serve(tmp_path, port, "--clients", "2", "--federation", "splitfed", "--epochs", "3")
    clients = [_client_process(tmp_path, port, index, "splitfed", "3", *flags) for index in (0, 1)]
    checkpoints = [tmp_path / f"c{index}" / "checkpoints" / "last.ckpt" for index in (0, 1)]
    wait_for(lambda: min(map(checkpoint_epoch, checkpoints)) >= 0 or server.poll() is not None)
    time.sleep(0.3)  # into the next round
    server.kill()
    server.wait()
    for process in clients:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 2 and "vanished or stalled" in errors and "Traceback" not in errors, errors[-2000:]
    assert max(map(checkpoint_epoch, checkpoints)) < 2, "a client finished before the kill"

    server = _serve(tmp_path, port, "--clients", "2", "--federation", "splitfed", "--epochs", "3", "--resume")
    clients = [_client_process(tmp_path, port, index, "splitfed", "3", *flags, "--resume") for index in (0, 1)]
    for process in clients:
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors[-2000:] + _finish(server)[1]
    code, output = _finish(server)
    assert code == 0, output
    steps = sum(-(-size // 64) * 3 for size in _shard_sizes(2))
    assert int(output.split("served ")[1].split()[0]) == steps
    _assert_each_step_applied_once_and_one_partition(tmp_path, steps)


def test_splitfed_clients_resume_a_serve_process_only_at_a_round_end_they_share():
    from splitpriv.parties import _state_to_resume

    saved = {18: {0: 9, 1: 9}, 36: {0: 18, 1: 18}}  # two round ends, by the sum of the clients' steps
    joined = {0: (None, {"resume_step": 18}), 1: (None, {"resume_step": 18})}
    assert _state_to_resume(saved, joined) == 36
    joined[1] = (None, {"resume_step": 9})  # checkpointed a round earlier than client 0
    with pytest.raises(SplitprivError, match="checkpointed at different rounds"):
        _state_to_resume(saved, joined)


def test_a_replayed_step_must_be_the_one_answered_and_the_log_holds_two_rounds():
    from splitpriv.transport import Replay

    replay = Replay(first_step=0, limit_bytes=1000)
    message, labels = torch.ones(2, 3), torch.tensor([0, 1])
    reply = (torch.zeros(4), torch.full((2, 3), 0.5))
    replay.answered(1, Replay.digest(message, labels), *reply)
    assert replay.replayed(2, Replay.digest(message, labels)) is None  # a new step
    assert all(torch.equal(a, b) for a, b in zip(replay.replayed(1, Replay.digest(message, labels)), reply))
    with pytest.raises(TransportError, match="step 1 sent again differs.*not reproducible"):
        replay.replayed(1, Replay.digest(message + 1e-7, labels))
    replay.round_ended(1)
    replay.answered(2, "b", *reply)
    replay.round_ended(2)  # rounds ended after steps 1 and 2: the answers since step 1 stay
    assert replay.refusal(1) is None and replay.refusal(2) is None and set(replay.answers) == {2}
    assert "ended after steps [1, 2]" in replay.refusal(0)
    replay.answered(3, "c", torch.zeros(300))  # 1,200 bytes: over the limit, the log is dropped
    assert replay.answers == {} and "cannot rejoin" in replay.refusal(2)


def _data(seed: int):
    return make_splits(load_run_config(None, {"seed": seed}).data, seed)


def _shard_sizes(clients: int) -> list[int]:
    data = _data(3)
    return [len(client_shard(data, index, clients).private_train) for index in range(clients)]


class _Recorder:
    """Stands in for a Link: records what the server sends to one client."""

    def __init__(self):
        self.sent = []

    def send(self, *tensors):
        self.sent.append(tensors)


def test_splitfed_rounds_average_the_partitions_weighted_by_shard_size():
    import threading

    from splitpriv.transport import Rounds

    rounds = Rounds(2, "splitfed", torch.nn.Linear(2, 1), save=lambda *_: None, wait_s=20)
    links = [_Recorder(), _Recorder()]
    weights = [torch.full((3,), 1.0, dtype=torch.float64), torch.full((3,), 5.0, dtype=torch.float64)]
    def end(i):
        links[i].send(rounds.end(i, weights[i], [1.0, 3.0][i], 10))

    threads = [threading.Thread(target=end, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    expected = (1 * weights[0] + 3 * weights[1]) / 4  # FedAvg: 4.0
    for link in links:
        assert torch.allclose(link.sent[0][0], expected)


def test_sequential_rounds_give_each_client_its_turn_with_the_partition_the_previous_one_left():
    import threading

    from splitpriv.transport import Rounds

    initial = torch.nn.Linear(2, 1)
    rounds = Rounds(2, "sequential", initial, save=lambda *_: None, wait_s=20)
    order, links = [], [_Recorder(), _Recorder()]
    second = threading.Thread(target=lambda: (rounds.start(links[1], 1), order.append(1)))
    second.start()  # client 1 asks first, but must wait for client 0's round
    second.join(0.5)
    assert second.is_alive() and order == []
    rounds.start(links[0], 0)
    order.append(0)
    left_by_client_0 = torch.arange(3, dtype=torch.float64)
    rounds.end(0, left_by_client_0, 1.0, 5)
    second.join(30)
    assert order == [0, 1]
    assert torch.equal(links[1].sent[0][0], left_by_client_0)  # client 1 starts where client 0 stopped


class _Sends:
    """Stands in for a Link that delivers one request header."""

    def __init__(self, header):
        self.header = header

    def receive_header(self):
        return self.header


def test_a_server_whose_clients_average_elsewhere_refuses_a_partition_and_a_fed_server_refuses_a_message():
    from splitpriv.transport import EPOCH_END, TRAIN, Rounds, average_rounds, serve_steps

    server = torch.nn.Linear(4, 2)
    rounds = Rounds(2, "splitfed", torch.nn.Linear(2, 1), save=lambda *_: None, wait_s=5, partitions=False)
    with pytest.raises(TransportError, match="must not see their weights"):
        serve_steps(_Sends((EPOCH_END, 0, torch.float64, (3,))), server, torch.optim.SGD(server.parameters(), 0.1), (4,),
                    2, 64, rounds, 0, 3)
    averaging = Rounds(2, "splitfed", torch.nn.Linear(2, 1), save=lambda *_: None, wait_s=5)
    with pytest.raises(TransportError, match="takes client partitions only"):
        average_rounds(_Sends((TRAIN, 1, torch.float32, (8, 4))), averaging, 0, 3)


def test_the_passive_attack_runs_from_the_servers_record_alone(tmp_path, capsys):
    """serve --record keeps what the server saw; attack --observed reconstructs the client's test images
    from it with the surrogate-client attack, and refuses attacks that need more than the record grants."""
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"seed": 3, "training": {"epochs": 2, "num_threads": 1, "progress_bar": False}}))
    port = free_port()
    server = _serve(tmp_path, port, "--config", str(config), "--record")
    overrides = {"out": str(tmp_path), "name": "recorded"}
    train_client(load_run_config(str(config), overrides), f"127.0.0.1:{port}", SECRET.encode(), 60)
    code, output = _finish(server)
    assert code == 0, output
    observed = next(tmp_path.glob("*-server/observed.pt"))
    record = torch.load(observed, weights_only=True)
    assert len(record["train_messages"]) == len(record["train_labels"]) == len(record["returned_gradients"]) > 0
    assert not any(key.startswith("client") for key in record["server_state"])  # the server's own partition only

    fast = "surrogate_client:capacity=small,surrogate_epochs=10,max_epochs=100,patience=5"
    assert main(["attack", "--observed", str(observed), "--config", str(config), "--attacks", fast, "--samples", "64"]) == 0
    result = json.loads((observed.parent / "attack.json").read_text())
    passive = result["worst_case"]["passive"]
    assert passive["mse_attack"] == "surrogate_client/small"
    # the attacker's prior: the mean image, whose MSE is the pixel variance
    images = remote_test_images(config)[:64]
    prior = float(((images - images.mean(0)) ** 2).mean())
    assert passive["mse"] < 0.8 * prior
    capsys.readouterr()
    assert main(["attack", "--observed", str(observed), "--config", str(config), "--attacks", "decoder_inversion"]) == 2
    assert "need(s) more than a record grants" in capsys.readouterr().err


def remote_test_images(config: Path) -> torch.Tensor:
    from splitpriv.data import make_splits

    cfg = load_run_config(str(config), {})
    return make_splits(cfg.data, cfg.seed).private_test.images.float() / 255


def test_a_broken_connection_is_reported_as_one_not_as_a_file_problem():
    from splitpriv.cli import user_message

    message = user_message(ConnectionResetError(104, "Connection reset by peer"), [], {})
    assert "Connection reset by peer" in message and "other party" in message and "path" not in message
