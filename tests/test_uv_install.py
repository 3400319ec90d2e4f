"""tools/uv_install.py: uv installs from the places pip's settings name, or not at all."""
import pytest

from uv_install import NoEquivalent, uv_options

# what `pip config list` prints on a machine with a local wheel folder, two extra indexes, a
# constraints file and PIP_* variables
LISTED = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.disable-pip-version-check='1'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
"""


def test_pip_settings_become_uv_options_and_variables():
    options, variables = uv_options(LISTED)
    assert options == ["--find-links", "/opt/wheels", "--constraints", "/etc/xdg/pip/constraints.txt",
                       "--extra-index-url", "file:///opt/pypi/simple", "--extra-index-url",
                       "file:///opt/pypi-more/simple"]
    assert variables == {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "UV_HTTP_TIMEOUT": "180"}


def test_a_variable_overrides_the_files_and_other_commands_sections_are_left_alone():
    listed = ("global.index-url='https://mirror.example/simple'\n:env:.index-url='https://corp.example/simple'\n"
              "install.trusted-host='corp.example'\ndownload.dest='/tmp/wheels'\n")
    assert uv_options(listed) == (["--index-url", "https://corp.example/simple",
                                   "--allow-insecure-host", "corp.example"], {})
    assert uv_options("") == ([], {})


@pytest.mark.parametrize("listed", ["global.client-cert='/etc/me.pem'\n", "install.use-feature='truststore'\n",
                                    "not a setting\n"])
def test_a_setting_uv_would_not_follow_means_pip_installs(listed):
    with pytest.raises(NoEquivalent):
        uv_options(listed)


def test_every_requirement_is_bounded_and_pinned_by_its_constraints_file():
    """Issue 29: peft>=0.17 was unbounded while PEFT 1.0 drops the transformers the remote-code
    environment needs. Each requirement is bounded below its next major release (or pinned), and
    its environment's constraints file (pip freeze of the tested environment, which the
    requirements file names) pins it."""
    import re

    from conftest import ROOT

    for requirements in ("requirements.txt", "requirements-transformers5.txt"):
        lines = [line.strip() for line in (ROOT / requirements).read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        constraint_files = [line[3:] for line in lines if line.startswith("-c ")]
        assert len(constraint_files) == 1, requirements
        pinned = dict(line.lower().split("==") for line in (ROOT / constraint_files[0]).read_text().splitlines()
                      if "==" in line)
        for line in lines:
            if line.startswith("-"):
                continue
            name = re.match(r"[A-Za-z0-9_.-]+", line).group().lower()
            assert "<" in line or "==" in line, f"{requirements}: {line} has no upper bound"
            assert name in pinned, f"{constraint_files[0]} does not pin {name}"
