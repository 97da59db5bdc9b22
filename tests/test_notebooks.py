"""Every Colab tutorial runs top to bottom on a real kernel, in the reduced-size mode.

Each notebook in `colab/` is executed with nbclient in a fresh temporary working
directory with `TFCOMPRESS_TUTORIAL_FAST=1` (fewer epochs, same code); a cell
that raises fails the test with the cell's source and traceback. A few cheap
checks on the printed outputs make sure each tutorial still shows what it is about.
"""

import os
import pathlib
import re
import sys

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

COLAB = pathlib.Path(__file__).resolve().parent.parent / "colab"
NOTEBOOKS = sorted(p.name for p in COLAB.glob("*.ipynb"))
CELL_TIMEOUT = 600


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


def test_every_notebook_is_collected():
    assert NOTEBOOKS == [
        "01_quickstart.ipynb",
        "02_pruning.ipynb",
        "03_quantization.ipynb",
        "04_distillation.ipynb",
        "05_android.ipynb",
    ]


def test_install_cell_runs_only_in_colab():
    for name in NOTEBOOKS:
        source = nbformat.read(COLAB / name, as_version=4).cells[1].source
        assert '"google.colab" in sys.modules' in source, name
        install = source.index("\"pip\", \"install\"")
        assert source.index('if "google.colab" in sys.modules:') < install, name


CHECKS = {
    "01_quickstart.ipynb": [
        r"Test accuracy on LiteRT: teacher FP32 (0\.\d+|1\.0+), student INT8 (0\.\d+|1\.0+)",
        r"Size \(gzip\): teacher FP32 [\d,]+ B -> student INT8 [\d,]+ B \(\d+\.\dx smaller\); student kernels \d+% zeros",
    ],
    "02_pruning.ipynb": [r"groups of 4 with <= 2 non-zeros: 100%", r"per-layer targets: test accuracy"],
    "03_quantization.ipynb": [r"qat_phase per epoch:", r"ops predicted on the Edge TPU"],
    "04_distillation.ipynb": [r"alone 0\.\d+, distilled 0\.\d+", r"fit with the teacher cache:"],
    "05_android.ipynb": [r"app-style accuracy on 397 test digits: (0\.\d+|1\.0+)"],
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
