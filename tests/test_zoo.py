"""The coverage matrix on the models users bring (README "Coverage", benchmarks/bench_zoo.py).

Each cell builds its model fresh, trains it a few steps and either works, asserted on
its figures, or raises the one clear error the matrix promises. The full matrix is
`python benchmarks/bench_zoo.py`; these are its cells that fit the suite's budget.
"""

import re

import pytest

import zoo

# (row, column) -> None when the cell works, else a pattern its one error must match.
EXPECTED = {
    ("KeywordNet", "prune+quantize"): None,
    # One error naming the class, the layer, one layers= filter and the float option.
    ("TextLSTM", "prune+quantize"): (
        r"cannot quantize 1 layer class .*LSTM \(lstm\)"
        r".*layers=lambda l: not isinstance\(l, keras\.layers\.LSTM\).*unsupported='float'"
    ),
    ("TextLSTM", "cluster"): None,
    ("TextGRU", "cluster"): None,
    ("Transformer", "prune"): None,
    ("Transformer", "cluster"): None,
}


def check_works(cell):
    figures = cell.figures
    if "sparsity" in figures:
        assert figures["sparsity"] == pytest.approx(0.5, abs=0.02)
    if "clusters" in figures:
        assert 2 <= figures["clusters"] <= 16
    if "integer" in figures and cell.column in ("quantize", "prune+quantize", "int8", "edgetpu"):
        assert figures["integer"], "int8 was asked for but the file still computes in float"
    if "cosine" in figures:
        # LiteRT answers like Keras on held-back inputs (logits of a model trained a few steps).
        assert figures["cosine"] >= (0.99 if cell.column in ("fp32", "fp16", "dynamic") else 0.9)


@pytest.mark.parametrize("row, column", sorted(EXPECTED), ids=lambda v: str(v))
def test_matrix_cell(row, column):
    cell = zoo.run_cell(row, column)
    expected_error = EXPECTED[(row, column)]
    if expected_error is None:
        assert cell.works, f"{row} / {column} should work but raised {cell.error}"
        check_works(cell)
    else:
        assert not cell.works, f"{row} / {column} now works ({cell.short()}): update the matrix"
        assert re.search(expected_error, cell.error), cell.error
