"""Generalised zero-shot: predict the classes that have no training image from their names, beside the seen ones.

The candidate classes are the catalogue's taxonomy: every articleType of ``styles.csv`` in the stage's
subset, a list known in advance like a shop's category tree. A class is *seen* when it has training
(train or val) images and *unseen* otherwise (the finetune stage's 35 test-only classes; with
``data.rank_on=all`` the pretrain stage's Perfume and Body Mist). Three parts, each fitted on the
training rows of seen classes only, and one constant chosen on validation:

1. **Seen classes**: the metadata-only baseline (``metadata_baseline``: a logistic regression on the one-hot
   categorical fields and the hashed name words; ``C`` picked on validation). It gives log p(c | x, seen).
2. **Every class, from its name** (the "ranker"): a compatibility score between the product name and each
   class name, ``w . phi(x, c)``, softmaxed over ALL candidate classes. ``phi`` holds the kinds of evidence a
   name gives for a class name, not the words themselves, so it transfers to class names never seen in
   training: the share of the class's words in the name (plurals folded; two adjacent name words joined,
   so "Eye Shadow" meets "Eyeshadow" and "T-shirt" "Tshirts"), that share weighted by how rare each word is
   among the class names (idf: "lip" names five classes, "plumper" one), whether all of them are there,
   whether the name's last word (its head noun) is one, the share met only as an abbreviation or a longer
   form (a name word of 3+ letters that starts the class word or that the class word starts: "Deo" for
   Deodorant, "Blusher" for Blush), and the mean best character-trigram similarity of each class word to a
   name word (spelling variants: "Moisturising", "Moisturiser"). The weights ``w`` are a conditional
   logit (one weight per kind of evidence, shared by all classes; McFadden 1974) fitted on the seen
   classes' training products, class-balanced. Nothing per class is learned, so an unseen class gets its
   score the same way a seen one does. The evidence also covers names that share no word with their class
   name (the finetune stage's Deodorant products say "Deo"; Kajal and Eyeliner's say "Eye Liner").
3. **Mixing**: p(c | x) = p_name(seen | x) * p_meta(c | x) for a seen class (the name model says whether the
   product is of a seen class, the metadata model which one) and p_name(c | x) for an unseen one. The
   metadata model is sharper on the seen classes; the name model alone can name the unseen ones.
4. **Calibrated stacking** (Chao et al. 2016): ``log p - gamma(x)`` for the seen classes against the bias of
   models fitted on seen classes only, ``gamma(x) = gamma + beta * doubt(x)`` with ``doubt(x) = -max_c log
   p_meta(c | x)``: a product the metadata model is unsure of is more likely of a class it never saw (beta 0
   is the single constant). (mix, beta, gamma) are chosen on VALIDATION: in each of ``N_FOLDS`` folds a third
   of the seen classes with validation images are held out as *pseudo-unseen* (their training rows leave both
   fits), and they maximise the harmonic mean of the pseudo-seen and pseudo-unseen class-mean validation Top-1,
   averaged over the folds. (How common a word is in training names,
   which weighs the evidence, is counted once over all training names, the held-out classes' included: word
   counts, no labels.)

5. **Word meanings** (``zeroshot.text``, ``semantic.py``): the cosine between sentence embeddings of the product
   name and of the class name (all-MiniLM-L6-v2, packaged offline: ``text_encoder``) as one more kind of
   evidence with one shared weight, raw (``cosine``) or through a linear map fitted on the seen classes'
   training products (``mapped``: a ridge from a product's embedding to its class name's, pulled toward the
   identity with strength ``zeroshot.text_l2``; refitted in each calibration fold without its held-out
   classes). It knows what no name matcher can: "Lip Balm" is Lip Care, "Nightdress" Baby Dolls.
6. **Grouped folds** (``zeroshot.fold_by=subCategory``): the calibration's folds hold whole subCategories out,
   so a pseudo-unseen class keeps no sibling among the seen ones (the finetune stage's unseen classes are a new
   department).

Evidence measured on validation and not adopted (definition words as evidence kinds, the photo's ImageNet labels
as ConSE points, the text map fitted on the other stage's classes, WordNet's definitions in the class text) is in
git history; docs/selection-ledger.md names the commit.

Test products enter only to be scored once at the end. Honoured keys: those of the metadata-only baseline
(``fusion.*``, ``metadata.*``, ``loss.weights``, ``train.seed``) and the ``zeroshot`` section.

    fashion finetune --technique zeroshot --profile quick --data /path/to/fashion-product-images-small.tar.gz
"""
