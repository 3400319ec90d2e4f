"""--lora_target_modules: what a pattern adapts, before the weights load (the MoE's fused
experts: test_v4_7.py)."""
import pytest
from transformers import AutoConfig

from conftest import REGISTRY, VERSIONS
from minicpmv_ft.lora_targets import matching_modules, meta_model, peft_targets


@pytest.mark.parametrize("version", VERSIONS)
def test_a_pattern_naming_a_module_with_3d_weights_that_are_not_experts_stays_a_module_pattern(tiny_model_dir,
                                                                                               version):
    """Only an experts module's [experts, out, in] tensors become PEFT target_parameters; a 3-D
    weight elsewhere (2.0's position embedding [1, patches, width] on its vision tower) does not."""
    entry = REGISTRY[version]
    model = meta_model(AutoConfig.from_pretrained(tiny_model_dir(version), trust_remote_code=True), entry)
    holders = [name for name, module in model.named_modules() if name and any(
        p.dim() == 3 for p in module.parameters(recurse=False)) and not hasattr(module, "num_experts")]
    for pattern in [entry.lora_target_regex] + holders[:3]:
        assert peft_targets(model, pattern) == {"target_modules": pattern}
    assert matching_modules(model, entry.lora_target_regex)  # the default adapts layers
    if version == "2.0":
        assert "vpm" in holders  # the case this guards: timm keeps pos_embed on the tower itself



@pytest.mark.long
def test_a_target_pattern_is_checked_in_a_fresh_process(tiny_model_dir):
    """The check builds the model from its config before any weights load; for 2.5 and 2.6 the
    published code imports only after the load fixes (NameError: List), which ran only on the
    weight-loading path (issue 28.2). One fresh process per version (nothing loaded before it),
    side by side."""
    import subprocess
    import sys

    from conftest import ROOT

    check = ("import sys; from minicpmv_ft.loading import load_tokenizer_and_version; "
             "from minicpmv_ft.lora_targets import check_lora_targets; "
             "_, config, version = load_tokenizer_and_version(sys.argv[1]); "
             "check_lora_targets(config, version, version.lora_target_regex, 0.05); print('checked', version.name)")
    running = {version: subprocess.Popen([sys.executable, "-c", check, str(tiny_model_dir(version))], cwd=ROOT,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for version in VERSIONS}
    for version, process in running.items():
        out, err = process.communicate()
        assert process.returncode == 0, f"{version}: {err[-2000:]}"
        assert out.split() == ["checked", REGISTRY[version].name]
