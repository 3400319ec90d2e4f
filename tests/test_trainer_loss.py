"""The trainer's loss: the LM head sees only labelled positions, and the value equals the
plain shifted cross-entropy over the full logits."""
import importlib.util

import pytest
import torch

from conftest import REMOTE_VERSIONS
from dataset import SupervisedDataset, data_collator
from trainer import lm_head_on_positions, shifted_targets


def samples(image_file):
    path = image_file("p.png", (700, 500))
    return [{"image": path, "conversations": [{"role": "user", "content": "<image>Describe."},
                                              {"role": "assistant", "content": "Noise, mostly grey."}]},
            {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                               {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}]


@pytest.mark.parametrize("version", REMOTE_VERSIONS)
def test_lm_head_runs_on_label_positions_only_and_loss_matches_full_logits(tiny, image_file, version):
    tok, model = tiny(version)
    model.eval()
    batch = data_collator([SupervisedDataset(samples(image_file), tok, model.config)[i] for i in range(2)])
    labels = batch.pop("labels")
    positions, targets = shifted_targets(labels)
    assert targets.numel() == int((labels[:, 1:] != -100).sum()) and targets.numel() < labels.numel() // 4
    seen = []
    lm_head = model.llm.get_output_embeddings()
    record = lm_head.register_forward_hook(lambda module, args, out: seen.append((args[0].shape, out.shape)))
    with torch.no_grad():
        with lm_head_on_positions(lm_head, positions):
            selected = model(data=batch, attention_mask=batch["attention_mask"]).logits
        full = model(data=batch, attention_mask=batch["attention_mask"]).logits
    record.remove()
    hidden, vocab = model.llm.config.hidden_size, model.llm.config.vocab_size
    assert seen[0] == (torch.Size([1, targets.numel(), hidden]), torch.Size([1, targets.numel(), vocab]))
    assert seen[1][1] == torch.Size([*labels.shape, vocab])  # without the hook: every position
    ours = torch.nn.functional.cross_entropy(selected[0].float(), targets)
    reference = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_per_token_losses_are_each_targets_cross_entropy_with_its_gradients(tiny, image_file):
    """reduction "none" (what a preference loss sums per answer): each trained token's
    cross-entropy [N], chunked or not, equal to the full logits' with the same gradients, and
    summing to the loss."""
    from trainer import lm_head_loss_at

    tok, model = tiny("2.6")
    model.eval()
    batch = data_collator([SupervisedDataset(samples(image_file), tok, model.config)[i] for i in range(2)])
    labels = batch.pop("labels")
    positions, targets = shifted_targets(labels)
    lm_head = model.llm.get_output_embeddings()
    weights = torch.linspace(-1, 1, targets.numel())  # any weighting of the tokens, as per-answer sums make

    def forward():
        return model(data=batch, attention_mask=batch["attention_mask"]).logits

    def weighted_grads(value):
        model.zero_grad()
        (value * weights).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    full = forward()
    expected = torch.nn.functional.cross_entropy(full[:, :-1][labels[:, 1:] != -100].float(), targets, reduction="none")
    expected_grads = weighted_grads(expected)
    for chunk in (3, 10**6):
        with lm_head_loss_at(lm_head, positions, targets, chunk, reduction="none"):
            per_token = forward()
        assert per_token.shape == targets.shape
        torch.testing.assert_close(per_token, expected, rtol=1e-5, atol=1e-5)
        grads = weighted_grads(per_token)
        assert grads.keys() == expected_grads.keys()
        for name, grad in grads.items():  # float32 sums in another order: within 1e-5 of each tensor's scale
            scale = expected_grads[name].abs().max()
            torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-5 * scale + 1e-8, msg=name)
    with torch.no_grad(), lm_head_loss_at(lm_head, positions, targets, 3):
        total = forward()
    torch.testing.assert_close(per_token.detach().sum(), total, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="--loss_kernel liger sums the loss over the tokens"):
        with lm_head_loss_at(lm_head, positions, targets, 3, kernel="liger", reduction="none"):
            forward()


@pytest.mark.parametrize("version", ["2.0", "2.6", "4.5"])
def test_chunked_loss_equals_one_cross_entropy_and_bounds_the_logits(tiny, image_file, version):
    """--loss_chunk_tokens: the same loss and gradients as one cross-entropy over every labelled
    position (1e-5), while the LM head never makes more rows of logits than the chunk, backward
    included; the loss comes out of the model's own forward (where DDP expects the head used)."""
    from trainer import lm_head_loss_at

    tok, model = tiny(version)
    model.train()
    batch = data_collator([SupervisedDataset(samples(image_file), tok, model.config)[i] for i in range(2)])
    labels = batch.pop("labels")
    positions, targets = shifted_targets(labels)
    lm_head = model.llm.get_output_embeddings()
    vocab = model.llm.config.vocab_size
    rows = []
    original = torch.nn.functional.linear

    def counting_linear(x, weight, *args):  # the head's projections: rows of logits made at once
        if weight.shape[0] == vocab:
            rows.append(x.shape[0])
        return original(x, weight, *args)

    results = {}
    for chunk in (3, 10**6):
        model.zero_grad()
        rows.clear()
        torch.nn.functional.linear = counting_linear
        try:
            with lm_head_loss_at(lm_head, positions, targets, chunk):
                loss = model(data=batch, attention_mask=batch["attention_mask"]).logits
            loss.backward()
        finally:
            torch.nn.functional.linear = original
        assert loss.dim() == 0
        if chunk == 3:
            assert max(rows) == 3 and len(rows) == 2 * -(-targets.numel() // 3)  # each chunk: forward + recompute
        else:
            assert rows == [targets.numel()]
        results[chunk] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (small, small_grads), (whole, whole_grads) = results[3], results[10**6]
    torch.testing.assert_close(small, whole, rtol=1e-5, atol=1e-6)
    assert small_grads.keys() == whole_grads.keys() and any("lm_head" in n for n in small_grads)
    for name in whole_grads:
        scale = whole_grads[name].abs().max()
        torch.testing.assert_close(small_grads[name], whole_grads[name], rtol=1e-5, atol=1e-5 * scale + 1e-8, msg=name)
    with torch.no_grad():  # and it is the loss of the model's own full logits
        full = model(data=batch, attention_mask=batch["attention_mask"]).logits
    reference = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                  reduction="sum")
    torch.testing.assert_close(whole, reference, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
                    reason="--loss_kernel liger needs CUDA and liger-kernel")
@pytest.mark.parametrize("version", ["2.5", "4.5"])
def test_liger_fused_loss_equals_the_chunked_loss(tiny, image_file, version):
    """--loss_kernel liger: same summed loss and gradients as the chunked loss (1e-5)."""
    import copy

    from trainer import lm_head_loss_at

    tok, model = tiny(version)
    model = copy.deepcopy(model).cuda().train()
    cpu_batch = data_collator([SupervisedDataset(samples(image_file), tok, model.config)[i] for i in range(2)])
    labels = cpu_batch.pop("labels").cuda()

    def to_cuda(value):  # tensors inside the batch's nested lists
        return value.cuda() if torch.is_tensor(value) else [to_cuda(v) for v in value] if isinstance(value, list) \
            else value

    batch = {key: to_cuda(value) for key, value in cpu_batch.items()}
    positions, targets = shifted_targets(labels)
    results = {}
    for kernel in ("chunked", "liger"):
        model.zero_grad()
        with lm_head_loss_at(model.llm.get_output_embeddings(), positions, targets, 16, kernel):
            loss = model(data=batch, attention_mask=batch["attention_mask"]).logits
        loss.backward()
        results[kernel] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(results["liger"][0], results["chunked"][0], rtol=1e-5, atol=1e-5)
    for name, grad in results["chunked"][1].items():
        torch.testing.assert_close(results["liger"][1][name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max() + 1e-8)
