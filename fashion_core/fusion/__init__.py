"""Product metadata in the network: encoders, fusion modules, auxiliary heads, and their wiring into a stage.

Inputs (``fusion.fields``; ``year`` is never one, it defines the split):

- categorical ``gender``, ``baseColour``, ``season``, ``usage`` (and, only when asked through
  ``fusion.leaky_fields``, ``masterCategory`` / ``subCategory``): a vocabulary fitted on the
  TRAINING rows of the stage that builds the encoders. Code 0 is the unknown bucket (a value never
  seen in training), code 1 is "missing" (empty cell); the literal ``NA`` is a value of its own.
  The techniques in ``experiments/`` leave ``season`` out: it is the catalogue season a product was
  listed in and tracks time like ``year`` (Tshirts: mostly Fall in 2010, mostly Summer in 2012).
- ``productDisplayName``: lower-cased words, plurals made singular (``encoders.s_stem``: the odd years
  write "Wallets" and "Dresses" where the even years write "Wallet" and "Dress"), and pairs with
  ``fusion.text_ngrams=2``, hashed with CRC-32 into ``fusion.text_buckets`` buckets, averaged by an
  ``EmbeddingBag``. Hashing rather than a learned vocabulary, because the finetune stage's classes
  bring words the pretrain stage never saw (``cufflinks``, ``saree``): they get their own buckets with
  nothing to fit or carry over, and the pretrained encoder keeps working on them.

Fusion (``fusion.mode``), on any backbone, keeping the embedding size of the image model, so every
head and transfer method works on the fused embedding:

- ``late``: [image embedding ; metadata embedding] -> Linear -> ReLU (the MLP head's hidden layer,
  which the class head reads);
- ``film``: the metadata embedding scales and shifts each channel of the image feature map
  (zero-initialised, so training starts from the image-only model), then ReLU and pooling.

The lookup tables learn at ``train.lr * fusion.meta_embed_lr_mult`` without weight decay: a word's
row moves only when the word is in the batch, and at the plain learning rate the name path is far
from trained within a quick profile's few hundred steps.

``fusion.meta_dropout`` zeroes an item's whole metadata embedding with that chance in training, so
the image path keeps classifying on its own (the name nearly gives the label away in training, and
odd-year names such as "... Kidswear" do not).

Auxiliary heads (``fusion.aux_master`` / ``fusion.aux_sub`` > 0) predict ``masterCategory`` /
``subCategory`` from the fused embedding as extra training targets; they are outputs only.
Feeding those two fields in as inputs (``fusion.leaky_fields``) tags the run ``leaky=true``.

Transfer methods on a fused model: the heads see the fused embedding, so linear_probe, partial,
imprint, imprint_finetune, ncm and finetune all work (imprint and NCM embed the training set with
its metadata). A fused model is not logged as an MLflow serving model (that one takes images only).

In the finetune stage the encoders (vocabularies and weights) come from the pretrain run; the
class head and the auxiliary heads are new, fitted on the finetune stage's own training rows.

The package, one module per concern, each importing only those before it: ``encoders``
(vocabularies, hashed text, auxiliary targets), ``modules`` (fusion layers, ``FusedNet``, parameter
groups, auxiliary loss), ``plan`` (a stage's plan), ``meta`` (the ``model.json`` round trip).
Every public name is importable from ``fashion_core.fusion`` as before.

    .venv/bin/python -c "from fashion_core.fusion import TextHasher; print(TextHasher(4096).encode(['Puma Men Black Shoes'])[0][:8])"
"""
