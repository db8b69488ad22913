"""The survey's latency model (Sec. 2.2.1) against hand-computed examples."""
import pytest

from splitpriv.latency import (Hop, chain_latency, input_transmission_time, processing_time, total_latency,
                               transmission_time)


def test_processing_time_is_flops_over_capacity():
    assert processing_time(3e9, 1.5e9) == pytest.approx(2.0)


def test_input_transmission_by_hand():
    # (1 - 0.5) * 1000 B / 1000 B/s + 0.1 s
    assert input_transmission_time(1000, 1000, rtt_s=0.1, input_reduction_rate=0.5) == pytest.approx(0.6)


def test_transmission_inference_by_hand():
    # (1 - 0.2) [(1 - 0.5)(1 - 0.25) * 2000 / 1000 + 0.1]: the survey's term, and exited requests pay no RTT
    time = transmission_time(2000, 1000, rtt_s=0.1, compression_rate=0.5, exit_rate=0.2, reduction_rate=0.25)
    assert time == pytest.approx(0.8 * (0.75 + 0.1))
    assert transmission_time(2000, 1000, compression_rate=0.5, exit_rate=0.2, reduction_rate=0.25) == \
        pytest.approx(0.5 * 0.8 * 0.75 * 2)  # without RTT: exactly the survey's T^T


def test_transmission_training_sends_the_gradient_back_dense_unless_it_is_compressed():
    # the quantised message forward, its gradient dense back: ((1 - 0.5) + 1)(1 - 0.25) * 2000 / 1000 + 0.1
    for exit_rate in (0.0, 0.2):  # the exit rate plays no part in training
        time = transmission_time(2000, 1000, rtt_s=0.1, compression_rate=0.5, exit_rate=exit_rate,
                                 reduction_rate=0.25, training=True)
        assert time == pytest.approx(1.5 * 1.5 + 0.1)
    # a gradient compressed like the message (top-k: values at the kept positions): 2 * (1 - 0.5) * 1.5 + 0.1
    assert transmission_time(2000, 1000, rtt_s=0.1, compression_rate=0.5, reduction_rate=0.25, training=True,
                             gradient_compression_rate=0.5) == pytest.approx(1.6)


def test_total_latency_by_hand():
    # xi_0 T_0 + (1 * 0.2 + 1 * 0.7) + (1 * 0.3 + 0 * 9.0)
    total = total_latency(send_input=1, input_time_s=0.6, processing_times_s=[0.2, 0.3],
                          transmission_times_s=[0.7, 9.0], processed=[1, 1], transmitted=[1, 0])
    assert total == pytest.approx(1.8)


FLOPS, OUTPUT_BYTES, INPUT_BYTES = [100.0, 200.0, 300.0], [50.0, 20.0, 10.0], 30.0


def test_two_device_cut_by_hand():
    result = chain_latency(FLOPS, OUTPUT_BYTES, INPUT_BYTES, [0], [100.0, 1000.0], [Hop(10.0, 0.1)])
    # device: 100 / 100 = 1.0; message 50 B / 10 B/s + 0.1 = 5.1; server: 500 / 1000 = 0.5
    assert result.processing_s == pytest.approx((1.0, 0.5))
    assert result.transmission_s == pytest.approx((5.1,))
    assert result.total_s == pytest.approx(6.6)


def test_two_device_training_by_hand():
    # the caller passes forward + backward FLOPs; the gradient crosses back: 2 * 50 / 10 + 0.1
    result = chain_latency(FLOPS, OUTPUT_BYTES, INPUT_BYTES, [0], [100.0, 1000.0], [Hop(10.0, 0.1, exit_rate=0.5)],
                           training=True)
    assert result.total_s == pytest.approx(1.0 + 10.1 + 0.5)


def test_exit_rate_and_compression_reduce_the_message():
    hop = Hop(10.0, 0.1, compression_rate=0.75, exit_rate=0.2)
    result = chain_latency(FLOPS, OUTPUT_BYTES, INPUT_BYTES, [0], [100.0, 1000.0], [hop])
    assert result.transmission_s == pytest.approx((0.8 * (0.25 * 50 / 10 + 0.1),))
    assert result.processing_s == pytest.approx((1.0, 0.8 * 0.5))  # the server runs for the 80 % that reach it


def test_an_exit_discounts_every_later_hop_and_partition_and_the_slo_sees_the_full_path():
    hops = [Hop(10.0, 0.1, exit_rate=0.5), Hop(20.0, 0.05)]
    result = chain_latency(FLOPS, OUTPUT_BYTES, INPUT_BYTES, [0, 1], [100.0, 200.0, 1000.0], hops)
    # r = (1, 0.5, 0.5): device 1.0, hop 0.5 (5 + 0.1), edge 0.5 * 1.0, hop 0.5 (20/20 + 0.05), cloud 0.5 * 0.3
    assert result.processing_s == pytest.approx((1.0, 0.5, 0.15))
    assert result.transmission_s == pytest.approx((0.5 * 5.1, 0.5 * 1.05))
    assert result.total_s == pytest.approx(1.0 + 2.55 + 0.5 + 0.525 + 0.15)
    no_exit = chain_latency(FLOPS, OUTPUT_BYTES, INPUT_BYTES, [0, 1], [100.0, 200.0, 1000.0],
                            [Hop(10.0, 0.1), Hop(20.0, 0.05)])
    assert result.full_path_s == pytest.approx(no_exit.total_s) == pytest.approx(no_exit.full_path_s)
    assert result.total_s < result.full_path_s


def test_raw_input_and_local_placements():
    raw = chain_latency(FLOPS, OUTPUT_BYTES, INPUT_BYTES, [-1], [100.0, 1000.0], [Hop(10.0, 0.1, reduction_rate=0.5)])
    assert raw.total_s == pytest.approx(0.5 * 30 / 10 + 0.1 + 600 / 1000)  # xi_0 T_0 + server
    assert raw.processing_s[0] == 0
    local = chain_latency(FLOPS, OUTPUT_BYTES, INPUT_BYTES, [2], [100.0, 1000.0], [Hop(10.0, 0.1)])
    assert local.total_s == pytest.approx(6.0) and local.transmission_s == (0.0,)


def test_three_device_chain_by_hand():
    result = chain_latency(FLOPS, OUTPUT_BYTES, INPUT_BYTES, [0, 1], [100.0, 200.0, 1000.0],
                           [Hop(10.0, 0.0), Hop(20.0, 0.05)])
    # 1.0 + 50/10 + 1.0 + (20/20 + 0.05) + 0.3
    assert result.total_s == pytest.approx(8.35)
    assert result.processing_s == pytest.approx((1.0, 1.0, 0.3))


def test_middle_device_may_only_forward():
    # device 0 runs block 0, the edge runs nothing and forwards the message, the cloud the rest
    result = chain_latency(FLOPS, OUTPUT_BYTES, INPUT_BYTES, [0, 0], [100.0, 200.0, 1000.0],
                           [Hop(10.0, 0.0), Hop(50.0, 0.0)])
    assert result.total_s == pytest.approx(1.0 + 5.0 + 0.0 + 1.0 + 0.5)


def test_boundaries_must_be_ordered():
    with pytest.raises(ValueError):
        chain_latency(FLOPS, OUTPUT_BYTES, INPUT_BYTES, [1, 0], [1.0, 1.0, 1.0], [Hop(1.0), Hop(1.0)])
