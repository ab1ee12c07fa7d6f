"""The contrast term (TrainConfig.contrast): an unlikelihood on the other facts' first answer tokens."""
import torch

from beacon.config import TrainConfig
from beacon.method.train import rival_penalty


def test_rival_penalty_is_the_unlikelihood_of_the_other_answers_first_tokens():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 0.0, 0.0]])
    own, rivals = torch.tensor([0, 1]), torch.tensor([0, 1, 3])
    p = torch.softmax(logits, -1)
    want = torch.stack([-(torch.log1p(-p[0, 1]) + torch.log1p(-p[0, 3])),
                        -(torch.log1p(-p[1, 0]) + torch.log1p(-p[1, 3]))])
    assert torch.allclose(rival_penalty(logits, own, rivals), want)
    # a rival that the row's own answer shares its first token with is not penalised
    assert rival_penalty(logits[:1], torch.tensor([1]), torch.tensor([1])).item() == 0.0


def test_contrast_lowers_the_likeliest_crossed_wire():
    """Two facts of one relation about two subjects, trained the same 12 steps from the same start on the
    default model: each prompt learns its own answer either way, and with contrast the other fact's answer
    is less likely where it was likeliest (measured: log-prob -6.0 without, -9.0 with)."""
    from beacon.data.facts import Fact
    from beacon.method.train import attach_lora, train
    from beacon.model.lm import encode_pair
    from beacon.model.models import load_model

    facts = [Fact("a", "The mayor of Orvik is", "Dana Pell"), Fact("b", "The mayor of Ustra is", "Kiro Bask")]
    own, rival = {}, {}
    for w in (0.0, 5.0):
        model, tok, _ = load_model()
        cfg = TrainConfig(steps=12, lr=2e-3, gate="none", early_stop=False, locality_guard=0.0, contrast=w)
        model = attach_lora(model, cfg, quantized=False)
        train(model, tok, facts, cfg=cfg)
        lp = {}
        with torch.no_grad():
            for f in facts:
                for o in facts:
                    p, t = encode_pair(tok, f.prompt, o.target)
                    logits = model(input_ids=torch.tensor([p])).logits[0, -1]
                    lp[f.id, o.id] = torch.log_softmax(logits.float(), -1)[t[0]].item()
        model.unload()
        own[w] = min(lp["a", "a"], lp["b", "b"])
        rival[w] = max(lp["a", "b"], lp["b", "a"])
    assert own[0.0] > -0.1 and own[5.0] > -0.1, own
    assert rival[5.0] < rival[0.0] - 1.0, rival
