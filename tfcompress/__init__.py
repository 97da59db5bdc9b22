"""tfcompress: compression scheduled inside one `model.fit`, on top of tfmot.

    import tf_keras as keras
    import tfcompress as tfc

    model = tfc.prune(model, final_sparsity=0.8)
    model.fit(x, y, epochs=5, callbacks=[tfc.CompressionCallback()])
    final = tfc.strip(model)
    tfc.summary(final)
"""

from tfcompress.version import __version__
