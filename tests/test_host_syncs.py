"""count_host_syncs: what makes the host wait for the device, counted on a CPU by the operations that would."""
import torch

from far.utils.host_syncs import count_host_syncs


def test_scalar_reads_and_data_dependent_shapes_are_counted():
    x = torch.arange(6.0)
    with count_host_syncs() as found:
        x.sum().item()
        bool(x.max() > 2)
        x[x > 2]
        torch.nonzero(x)
    assert found == {'scalar_reads': 2, 'data_dependent': 2, 'to_host': 0, 'total': 4}


def test_device_side_work_is_not_a_sync():
    x = torch.randn(4, 4)
    with count_host_syncs() as found:
        torch.where(x > 0, x, 0.0).softmax(-1) @ x
    assert found['total'] == 0
