"""Version detection from the checkpoint's config, aliases, and config field locations."""
import re

import pytest

import make_tiny_model
from conftest import NATIVE_VERSIONS, REMOTE_VERSIONS, VERSIONS
from minicpmv_ft.versions import VERSIONS as REGISTRY
from minicpmv_ft.versions import VersionError, by_name, detect_version, image_settings, llm_config_family

FAMILIES = {"2.0": "minicpm", "2.5": "llama", "2.6": "qwen2", "4.0": "llama", "4.5": "qwen3", "4.6": "qwen3_5_text",
            "4.7": "qwen3_5_text", "4.7-moe": "qwen3_5_moe_text"}


def base_version(name: str) -> str:
    """The registry version of a test parameter ("4.7-moe": "4.7")."""
    return make_tiny_model.VARIANTS.get(name, (name,))[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_detected_from_config(tiny, version):
    tok, model = tiny(version)
    assert detect_version(model.config, tok) is REGISTRY[base_version(version)]
    assert llm_config_family(model.config) == FAMILIES[version]
    assert REGISTRY[base_version(version)].llm_config_family == FAMILIES[base_version(version)]


def test_every_registry_entry_has_a_tiny_model_and_runs_in_the_parametrised_tests():
    """Adding a version (docs/adding-a-version.md): its entry, its tiny-model recipe, and the tests
    parametrised with conftest's lists, which come from the registry."""
    assert sorted([*make_tiny_model.RECIPES, *make_tiny_model.NATIVE_RECIPES], key=float) == list(REGISTRY)
    assert sorted(REMOTE_VERSIONS + NATIVE_VERSIONS) == sorted([*REGISTRY, *make_tiny_model.VARIANTS])


def test_the_environment_table_holds_every_version_and_requirements_file_once():
    """run_tests.sh, demo.sh and the launchers read the table (minicpmv_ft/versions/environments.py);
    its versions and model types are the registry's, the remote-code ones in the default."""
    from conftest import ROOT
    from minicpmv_ft.versions.environments import DEFAULT, ENVIRONMENTS, for_version

    assert sorted((v for env in ENVIRONMENTS for v in env.versions), key=float) == list(REGISTRY)
    assert DEFAULT.versions == tuple(REMOTE_VERSIONS) and ENVIRONMENTS[0] is DEFAULT
    for name, entry in REGISTRY.items():
        assert entry.model_type in for_version(name).model_types
        assert for_version(name).model_types[entry.model_type].startswith(
            entry.checkpoints if entry.model_type != "minicpmv" else "MiniCPM-V 2.0-4.5")
    assert sorted(p.name for p in ROOT.glob("requirements*.txt")) == sorted(env.requirements for env in ENVIRONMENTS)
    assert len({env.venv for env in ENVIRONMENTS}) == len(ENVIRONMENTS)


@pytest.mark.parametrize("args,printed", [
    (["list"], ".venv requirements.txt\n.venv-transformers5 requirements-transformers5.txt\n"),
    (["version", "4.6"], ".venv-transformers5 requirements-transformers5.txt\n"),
    (["version", "2.0"], ".venv requirements.txt\n"),
    (["model", "FOLDER"], ".venv-transformers5 requirements-transformers5.txt\n"),
    (["model", "openbmb/MiniCPM-V-4_5"], ".venv requirements.txt\n"),
])
def test_the_table_is_read_by_the_shell_scripts_with_any_python3(tmp_path, args, printed):
    """The system's python3, without transformers or this package's imports."""
    import subprocess

    from conftest import ROOT

    (tmp_path / "config.json").write_text('{"model_type": "minicpmv4_6"}')
    args = [str(tmp_path) if arg == "FOLDER" else arg for arg in args]
    done = subprocess.run(["python3", "-S", str(ROOT / "minicpmv_ft" / "versions" / "environments.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, printed, "")


@pytest.mark.parametrize("version,field,value,message", [
    ("2.6", "placeholder_scheme", "per-slice", "placeholder_scheme 'per-slice' is none of ('wrapped', 'per_slice')"),
    ("4.6", "placeholder_scheme", "per_slice", "placeholder_scheme 'per_slice' is none of ('processor',)"),
    ("2.6", "pixel_layout", "patch-major", "pixel_layout 'patch-major' is none of"),
    ("2.0", "packed_attention", "mask4d", "packed_attention 'mask4d' is none of"),
    ("4.6", "auto_class", "AutoModelForImageTextToTex", "auto_class 'AutoModelForImageTextToTex' is none of"),
    ("2.6", "model_type", "minicpmv4_6", "a remote-code checkpoint's config.json says model_type 'minicpmv'"),
    ("4.6", "model_type", "minicpmv4_8", "model_type 'minicpmv4_8' has no environment"),
])
def test_a_mistyped_entry_fails_when_it_is_made(version, field, value, message):
    """An entry's enum-like fields are checked against their values and its family: a typo does
    not fall through to another scheme's branch."""
    import dataclasses

    with pytest.raises(ValueError, match=f"MiniCPM-V {version}: {re.escape(message)}"):
        dataclasses.replace(REGISTRY[version], **{field: value})


def test_the_native_versions_are_the_native_family_and_the_rest_remote_code():
    from minicpmv_ft.versions.family import NATIVE, REMOTE_CODE

    assert {name for name, entry in REGISTRY.items() if entry.family is NATIVE} == set(map(base_version, NATIVE_VERSIONS))
    assert {name for name, entry in REGISTRY.items() if entry.family is REMOTE_CODE} == set(
        map(base_version, REMOTE_VERSIONS))
    assert NATIVE_VERSIONS and REMOTE_VERSIONS


@pytest.mark.parametrize("alias,version", [
    ("minicpm", "2.0"), ("llama3", "2.5"), ("qwen", "2.6"), ("qwen2", "2.6"), ("QWEN2", "2.6"), ("llama", "4.0"),
    ("qwen3", "4.5"), ("4.5", "4.5"), ("2.0", "2.0"),
])
def test_aliases(alias, version):
    assert by_name(alias) is REGISTRY[version]


def test_explicit_llm_type_must_agree(tiny):
    tok, model = tiny("4.0")
    assert detect_version(model.config, tok, "llama") is REGISTRY["4.0"]
    with pytest.raises(VersionError, match=r"--llm_type 'llama3' contradicts the checkpoint, which is MiniCPM-V 4.0.*"
                                           r"set it to one of 4.0, llama, minicpm4"):
        detect_version(model.config, tok, "llama3")
    with pytest.raises(VersionError, match=r"unknown llm_type 'gpt'; supported: 2.0 = MiniCPM-V 2.0 .*4.5 = "):
        detect_version(model.config, tok, "gpt")


def test_real_2_0_vocabulary_has_no_chat_tokens(tiny):
    """<用户>/<AI> are plain text in 2.0's vocabulary: detection must not rely on them."""
    tok, model = tiny("2.0")
    assert "<AI>" not in tok.get_vocab() and len(tok.tokenize("<AI>")) > 1
    assert detect_version(model.config, tok).name == "2.0"


def test_unknown_checkpoint_lists_the_supported_ones(tiny):
    from transformers import GPT2Config, Qwen3Config

    tok = tiny("4.5")[0]
    with pytest.raises(VersionError, match=r"unsupported checkpoint \(GPT2Config: LLM family None\); supported: "
                                           r"2.0 = MiniCPM-V 2.0.*4.5 = MiniCPM-V 4.5"):
        detect_version(GPT2Config(), tok)
    future = Qwen3Config()
    future.version = 4.7
    with pytest.raises(VersionError, match=r"LLM family 'qwen3', version 4.7"):
        detect_version(future, tok)


def test_tokenizer_from_another_checkpoint(tiny):
    with pytest.raises(VersionError, match=r"config says MiniCPM-V 2.5 but the tokenizer lacks '<\|eot_id\|>'"):
        detect_version(tiny("2.5")[1].config, tiny("2.6")[0])


@pytest.mark.parametrize("version,expected", [
    ("2.0", (64, 14, 9, 448, False, "wrapped", "chw")),
    ("2.5", (96, 14, 9, 448, False, "wrapped", "patch_major")),
    ("2.6", (64, 14, 9, 448, True, "per_slice", "patch_major")),
    ("4.0", (64, 14, 9, 448, True, "per_slice", "patch_major")),
    ("4.5", (64, 14, 9, 448, True, "per_slice", "patch_major")),
])
def test_image_settings_read_from_each_versions_config(tiny, version, expected):
    config = tiny(version)[1].config
    s = image_settings(config, REGISTRY[version])
    assert (s.query_num, s.patch_size, s.max_slice_nums, s.scale_resolution, s.use_image_id,
            s.placeholder_scheme, s.pixel_layout) == expected
    assert image_settings(config, REGISTRY[version], max_slice_nums=2).max_slice_nums == 2
    with pytest.raises(ValueError, match="max_slice_nums must be >= 1"):
        image_settings(config, REGISTRY[version], max_slice_nums=0)


def test_slice_config_given_as_dict_without_scale_resolution():
    config = type("Config", (), {"slice_config": {"max_slice_nums": 4}, "vision_config": {"patch_size": 14},
                                 "query_num": 96})()
    s = image_settings(config, REGISTRY["2.5"])
    assert (s.max_slice_nums, s.scale_resolution, s.patch_size, s.query_num) == (4, 448, 14, 96)


def test_no_module_outside_the_registry_names_a_version():
    """Version differences are fields of the registry entries; no other file branches on a name."""
    from conftest import ROOT

    names = "|".join(re.escape(name) for version in REGISTRY.values() for name in version.names)
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']""")
    shell = re.compile(rf"""\[\s.*=\s*["']?({names})["']?\s*\]""")  # [ "$VERSION" = "4.6" ]
    offenders = []
    for path in [*ROOT.glob("*.py"), *(ROOT / "minicpmv_ft").glob("*.py"), *ROOT.glob("*.sh")]:
        check = shell if path.suffix == ".sh" else pattern
        offenders += [f"{path.name}: {line.strip()}" for line in path.read_text().splitlines() if check.search(line)]
    assert offenders == []


def test_model_code_is_loaded_in_one_place():
    """Every load of a checkpoint's model code (from_pretrained of its Auto class, or from_config)
    goes through loading.model_class, which runs the version's load fixes first (issue 28.2: the
    LoRA target check built the model without them)."""
    from conftest import ROOT

    loads = re.compile(r"getattr\(transformers|(?<!model_class\(version\))\.from_config\(|"
                       r"AutoModel(ForImageTextToText)?\.from_pretrained\(")
    found = [f"{path.relative_to(ROOT)}: {line.strip()}"
             for path in [*ROOT.glob("*.py"), *(ROOT / "minicpmv_ft").rglob("*.py")]
             for line in path.read_text().splitlines() if loads.search(line)]
    assert found == ["minicpmv_ft/loading.py: return getattr(transformers, version.auto_class)"]
