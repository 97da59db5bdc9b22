"""The Colab tutorials: their sources, their install cell, and a run of each top to bottom.

`colab/NN_name.py` (jupytext percent format) is the source of `colab/NN_name.ipynb`; the tests
check that both hold the same cells, so a notebook cannot drift from its source. Each notebook is
executed with nbclient in a fresh temporary working directory with `TFCOMPRESS_TUTORIAL_FAST=1`
(fewer epochs and exports, same code); a cell that raises fails the test with the cell's source
and traceback. Checks on the printed outputs make sure each tutorial still shows what it is about.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' (nbformat, nbclient, ipykernel)")
jupytext = pytest.importorskip("jupytext", reason="pip install -e '.[dev]' (jupytext)")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"
SOURCES = sorted(p.name for p in COLAB.glob("*.py"))
NOTEBOOKS = sorted(p.name for p in COLAB.glob("*.ipynb"))
CELL_TIMEOUT = 600
FIND_SPEC = importlib.util.find_spec


def cells(notebook):
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def source_of(name):
    """The notebook that `colab/<name>.py` describes, as jupytext reads it."""
    return jupytext.read(COLAB / name.replace(".ipynb", ".py"))


def setup_cell(name):
    """The first code cell: the one that installs tfcompress in Colab."""
    notebook = nbformat.read(COLAB / name, as_version=4)
    return next(cell.source for cell in notebook.cells if cell.cell_type == "code")


def test_every_notebook_is_collected():
    assert NOTEBOOKS == [
        "01_quickstart.ipynb",
        "02_pruning.ipynb",
        "03_quantization.ipynb",
        "04_distillation.ipynb",
        "05_android.ipynb",
        "06_make_it_faster.ipynb",
        "07_deep_compression.ipynb",
        "08_tf_keras_quickstart.ipynb",
    ]
    assert SOURCES == [name.replace(".ipynb", ".py") for name in NOTEBOOKS], "every notebook has one .py source"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_holds_the_cells_of_its_source(name):
    notebook = nbformat.read(COLAB / name, as_version=4)
    nbformat.validate(notebook)
    source = name.replace(".ipynb", ".py")
    assert cells(notebook) == cells(source_of(name)), (
        f"colab/{name} and colab/{source} hold different cells: edit the .py and run "
        f"`jupytext --to ipynb --update colab/{source}` (to keep edits made in the notebook instead: "
        f"`jupytext --to py:percent --update colab/{name}`)"
    )
    # Committed without outputs, and paired with the source so `jupytext --sync` finds it.
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in notebook.cells if cell.cell_type == "code"), f"{name} carries outputs"
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert notebook.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_uses_the_public_api_only(name):
    text = (COLAB / name.replace(".ipynb", ".py")).read_text()
    for dead in ("getattr(tfc", "getattr(tfe", "older tfcompress", "YOUR_ORG"):
        assert dead not in text, f"{name}: {dead!r}"
    assert not re.findall(r"\b(?:tfcompress|tflite_export|tfc|tfe)\._(?!_)\w+", text), f"{name} reaches into private modules"


def test_the_tutorials_cover_the_public_verbs():
    text = "".join((COLAB / name).read_text() for name in SOURCES)
    for verb in ("tfc.prune(", "tfc.quantize(", "tfc.Distiller(", "tfc.CompressionCallback(", "tfc.strip(",
                 "tfc.summary(", "tfe.export(", "tfe.inspect(", "tfe.edgetpu_report("):
        assert verb in text, f"no tutorial calls {verb}"


def test_the_install_cell_is_the_same_in_every_notebook():
    first = setup_cell(NOTEBOOKS[0])
    for name in NOTEBOOKS:
        assert setup_cell(name) == first, f"{name}: its setup cell differs from {NOTEBOOKS[0]}'s"
        notebook = nbformat.read(COLAB / name, as_version=4)
        code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
        assert len(re.findall(r"^REPOSITORY = ", code, re.M)) == 1, f"{name}: REPOSITORY is set once, in one place"
        assert "github.com/" not in code.replace("github.com/OWNER/", ""), f"{name} names a repository"


def run_setup_cell(monkeypatch, *, in_colab, importable, repository=None):
    """Runs the install cell here with Colab and pip faked: returns the pip commands it ran."""
    source = setup_cell(NOTEBOOKS[0])
    if repository is not None:
        source = source.replace('REPOSITORY = ""', f"REPOSITORY = {repository!r}")
    commands = []
    monkeypatch.setattr(subprocess, "check_call", lambda command, **kwargs: commands.append(command))
    if in_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda module, *args: None if module == "tfcompress" and not importable else FIND_SPEC(module, *args),
    )
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    exec(compile(source, "setup cell", "exec"), {"__name__": "__main__"})
    return commands


def test_install_cell_installs_only_in_colab_and_only_when_missing(monkeypatch, capsys):
    assert run_setup_cell(monkeypatch, in_colab=False, importable=False) == []
    assert run_setup_cell(monkeypatch, in_colab=True, importable=True) == []  # CI, or a second run
    assert capsys.readouterr().out.count("mode") == 2


def test_install_cell_installs_from_repository(monkeypatch):
    repository = "git+https://example.invalid/somebody/tfcompress@branch"
    commands = run_setup_cell(monkeypatch, in_colab=True, importable=False, repository=repository)
    assert commands == [[sys.executable, "-m", "pip", "install", "-q", f"tfcompress[examples] @ {repository}"]]


def test_install_cell_without_repository_says_what_to_set(monkeypatch):
    with pytest.raises(RuntimeError, match=r"Set REPOSITORY in this cell .*git\+https://github.com/OWNER/tfcompress"):
        run_setup_cell(monkeypatch, in_colab=True, importable=False)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec that runs this interpreter, so the notebooks see the same packages."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().get_all_specs()
    python3 = specs.get("python3", {}).get("spec", {}).get("argv", [""])[0]
    # jupyter_client launches a kernelspec whose argv starts with a bare "python" with sys.executable.
    if python3 in ("python", f"python{sys.version_info[0]}") or (
        python3 and os.path.realpath(python3) == os.path.realpath(sys.executable)
    ):
        return "python3"
    # Register one for this interpreter under a private JUPYTER_PATH (no user config touched).
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("kernels")
    install(kernel_name="tfcompress-tests", prefix=str(prefix))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(prefix / "share" / "jupyter"), os.environ.get("JUPYTER_PATH", "")]
    )
    return "tfcompress-tests"


def run_notebook(name, kernel_name, workdir):
    notebook = nbformat.read(COLAB / name, as_version=4)
    env_before = os.environ.get("TFCOMPRESS_TUTORIAL_FAST")
    os.environ["TFCOMPRESS_TUTORIAL_FAST"] = "1"  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(
            notebook,
            timeout=CELL_TIMEOUT,
            kernel_name=kernel_name,
            resources={"metadata": {"path": str(workdir)}},
        )
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("TFCOMPRESS_TUTORIAL_FAST", None)
        else:
            os.environ["TFCOMPRESS_TUTORIAL_FAST"] = env_before
    return notebook


def text_of(notebook):
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                parts.append(output["text"])
            elif "data" in output and "text/plain" in output["data"]:
                parts.append(output["data"]["text/plain"])
    return "".join(parts)


def images_in(notebook):
    return sum(
        "image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", [])
    )


ACCURACY = r"(0\.\d{3}|1\.000)"
CHECKS = {
    "01_quickstart.ipynb": [
        rf"Test accuracy on LiteRT: teacher FP32 {ACCURACY}, student INT8 {ACCURACY}",
        r"Size \(gzip\): teacher FP32 [\d,]+ B -> student INT8 [\d,]+ B \(\d+\.\dx smaller\); student kernels \d+% zeros",
    ],
    "08_tf_keras_quickstart.ipynb": [
        rf"Test accuracy on LiteRT: teacher FP32 {ACCURACY}, student INT8 {ACCURACY}",
        r"Size \(gzip\): teacher FP32 [\d,]+ B -> student INT8 [\d,]+ B \(\d+\.\dx smaller\); student kernels \d+% zeros",
    ],
    "02_pruning.ipynb": [
        r"groups of 4 with <= 2 non-zeros: 100%",
        r"conv1 .* 1 input channel\(s\), a padded group: 0% zeros",  # its one weight per group kept
        r"per-layer targets: test accuracy",
        r"polynomial, end=0\.75 +final sparsity 80%",
        r"polynomial, begin=0\.25, end=0\.5 +final sparsity 80%",
        r"constant from 0\.25 +final sparsity 80%",
    ],
    "03_quantization.ipynb": [
        r"qat_phase per epoch: \[1(\.0)?, 2(\.0)?\]",
        rf"PTQ INT8 +{ACCURACY}",
        rf"QAT INT8 +{ACCURACY}",
        rf"fp16 +[\d.]+ ms .* acc {ACCURACY}",
        rf"int8 \(QAT\) +[\d.]+ ms .* acc {ACCURACY}",
        r"\b(\d+)/\1 ops predicted on the Edge TPU",  # the profile maps every op of this net
        r"mixed model computes in float16",
        rf"mixed_float16 training -> QAT INT8: Keras {ACCURACY}, LiteRT INT8 {ACCURACY}",
    ],
    "04_distillation.ipynb": [
        rf"alone {ACCURACY}, distilled {ACCURACY}",
        rf"logits {ACCURACY}, logits \+ dense features {ACCURACY}",
        r"fit with the teacher cache: [\d.]+ s .*teacher on every batch: [\d.]+ s",
    ],
    "05_android.ipynb": [rf"app-style accuracy on 397 test digits: {ACCURACY}"],
    "06_make_it_faster.ipynb": [
        r"channel_sparsity",
        r"FP32 latency: dense [\d.]+ ms -> pruned [\d.]+ ms \(\d+\.\dx faster\)",
        rf"pruned \+ QAT INT8: [\d,]+ B \(dense FP32 [\d,]+ B\), LiteRT accuracy {ACCURACY}, fully integer: True",
    ],
    "07_deep_compression.ipynb": [
        r"impossible order: Clustering of layer 'fc1' begins at 0\.3, before its pruning ends at 0\.5",
        # Every kernel on LiteRT: the zeros, and at most 16 values, zero included.
        r"95\.0% zeros, (1[0-6]|[2-9]) distinct values\n[^\n]*95\.0% zeros, (1[0-6]|[2-9]) distinct values\n"
        r"[^\n]*95\.0% zeros, (1[0-6]|[2-9]) distinct values",
        rf"Deep Compression in one fit: FP32 [\d,]+ B -> INT8 [\d,]+ B gzip \(\d+\.\dx smaller\), "
        rf"LiteRT accuracy {ACCURACY} -> {ACCURACY}, fully integer: True",
        rf"sensitivity-guided: [\d,]+ B gzip, accuracy {ACCURACY}",
    ],
}


@pytest.fixture(scope="module")
def executed(kernel_name, tmp_path_factory):
    """Runs a notebook once per test session: `executed(name)` -> (notebook, its working directory)."""
    cache = {}

    def run(name):
        if name not in cache:
            workdir = tmp_path_factory.mktemp(name.split(".")[0])
            cache[name] = run_notebook(name, kernel_name, workdir), workdir  # raises on a failing cell
        return cache[name]

    return run


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, executed):
    notebook, _ = executed(name)
    text = text_of(notebook)
    assert "fast mode" in text
    for pattern in CHECKS[name]:
        assert re.search(pattern, text), f"{name}: no output matching {pattern!r}"
    assert images_in(notebook) >= 1, f"{name} shows no plot"
    # Outputs go to the notebook and its working directory, never into the repository.
    assert not list(COLAB.glob("*.tflite")) and not list(COLAB.glob("*.png"))


def test_quickstart_compresses_and_keeps_accuracy(executed):
    """Even in the fast mode the compressed student is far smaller and still classifies digits."""
    notebook, workdir = executed("01_quickstart.ipynb")
    text = text_of(notebook)
    teacher, student = map(float, re.search(r"teacher FP32 ([\d.]+), student INT8 ([\d.]+)", text).groups())
    smaller = float(re.search(r"\((\d+\.\d)x smaller\)", text).group(1))
    assert student > 0.8 and teacher > 0.8
    assert smaller > 5
    assert (workdir / "student_int8.tflite").exists()


def test_android_app_path_matches_the_export_check(executed):
    """Quantizing raw pixels the way an app does gives the accuracy export verified."""
    notebook, workdir = executed("05_android.ipynb")
    app, export = map(float, re.search(r"test digits: ([\d.]+) \(export's own check: ([\d.]+)\)",
                                       text_of(notebook)).groups())
    assert app > 0.8 and abs(app - export) <= 0.01
    assert (workdir / "digits_int8.tflite").exists()
