"""scripts/onet_head_swap.py: the face scores come from one O-Net, boxes and landmarks from the other."""

import torch
from scripts_dir import load_script

from mtcnn.model.nets import build_net


def test_swapped_heads_take_scores_from_one_net_and_boxes_from_the_other():
    torch.manual_seed(0)
    score_net, box_net = build_net("onet").eval(), build_net("onet").eval()
    pixels = torch.rand(5, 3, 48, 48) * 255
    swapped = load_script("onet_head_swap").SwappedHeads(score_net, box_net).eval()
    with torch.no_grad():
        out, scored, boxed = swapped(pixels), score_net(pixels), box_net(pixels)
    torch.testing.assert_close(out.logits, scored.logits)
    torch.testing.assert_close(out.box, boxed.box)
    torch.testing.assert_close(out.landmarks, boxed.landmarks)
    assert not torch.allclose(scored.box, boxed.box)  # two different nets, so the test can fail
