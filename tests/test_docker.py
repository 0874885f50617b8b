"""The Docker image and the chroot install the same Caffe (issue 14).

No Docker engine runs here, so the image is never built by the tests; what can be checked without
one is that docker/Dockerfile and docker/caffe-rootfs.sh read one package list, docker/packages.txt,
and nothing else, and that both build on Debian bullseye (the last Debian release with Caffe).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from conftest import ROOT

DOCKER = ROOT / "docker"


def listed_packages() -> list[str]:
    """docker/packages.txt as both files read it: '#' starts a comment, one package a line."""
    text = (DOCKER / "packages.txt").read_text()
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def dockerfile_instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_package_list_is_plain_debian_names():
    packages = listed_packages()
    assert {"caffe", "python3-caffe"} <= set(packages)
    for name in packages:  # one name a line: no versions, options or two names on a line
        assert re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", name), name


def test_dockerfile_base_is_bullseye():
    instructions = dockerfile_instructions(DOCKER / "Dockerfile")
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) == 1, froms
    image = froms[0].split()[0]
    assert image.endswith("-bullseye"), f"{image}: Caffe is packaged only in Debian bullseye"


def test_dockerfile_installs_exactly_packages_txt():
    """The image copies docker/packages.txt and apt-installs what it lists, and no other apt
    package: the image's Caffe is the chroot's."""
    instructions = dockerfile_instructions(DOCKER / "Dockerfile")
    copies = [args.split() for word, args in instructions if word == "COPY"]
    copied = [dst for *srcs, dst in copies if srcs == ["docker/packages.txt"]]
    assert len(copied) == 1, copies
    runs = " && ".join(args for word, args in instructions if word == "RUN")
    installs = re.findall(r"apt-get install ([^&]*)", runs)
    assert len(installs) == 1, installs
    # Options, then one argument: the list file with its comments stripped; no package inline.
    arguments = re.sub(r"^(\s*-\S+)*\s*", "", installs[0]).strip()
    assert arguments == f"$(sed -e 's/#.*//' {copied[0]})", installs[0]
    # That shell expansion, run on the real file, gives exactly the listed packages.
    expanded = subprocess.run(["sed", "-e", "s/#.*//", str(DOCKER / "packages.txt")],
                              capture_output=True, text=True, check=True).stdout.split()
    assert expanded == listed_packages()


def test_rootfs_script_reads_packages_txt_for_bullseye():
    script = (DOCKER / "caffe-rootfs.sh").read_text()
    assert 'PACKAGES_FILE="$HERE/packages.txt"' in script
    assert 'SUITE="${CAFFE_ROOTFS_SUITE:-bullseye}"' in script
    assert '--include="$PACKAGES"' in script
    # Its own parsing of the list (the PACKAGES= line), run on the real file.
    line = next(l for l in script.splitlines() if l.startswith('PACKAGES="$('))
    listing = shlex.quote(str(DOCKER / "packages.txt"))
    command = line[len('PACKAGES="$('):-len(')"')].replace('"$PACKAGES_FILE"', listing)
    if shutil.which("paste") is None:
        pytest.skip("needs coreutils' paste")
    got = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout
    assert got.strip().split(",") == listed_packages()


def test_rootfs_script_usage_without_root():
    """Without a DIR the script only prints its usage (exit status 2), root or not."""
    result = subprocess.run(["bash", str(DOCKER / "caffe-rootfs.sh")], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "usage" in result.stderr
