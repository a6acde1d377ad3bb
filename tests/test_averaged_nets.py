"""scripts/averaged_nets.py: one stage run as the mean of several nets' outputs."""

import torch
from scripts_dir import load_script

from mtcnn.model.nets import build_net


def test_averaged_nets_give_the_mean_of_each_output():
    torch.manual_seed(0)
    nets = [build_net("rnet").eval() for _ in range(3)]
    pixels = torch.rand(5, 3, 24, 24) * 255
    averaged = load_script("averaged_nets").AveragedNets(nets).eval()
    with torch.no_grad():
        out, each = averaged(pixels), [net(pixels) for net in nets]
    for field in ("logits", "box", "landmarks"):
        by_hand = sum(getattr(single, field) for single in each) / 3
        torch.testing.assert_close(getattr(out, field), by_hand)
    assert not torch.allclose(each[0].box, each[1].box)  # different nets, so the test can fail
