"""GPT-3's data preparation (Brown et al. 2020, §2.2, Appendices A and C), stages of the data step.

1. ``quality``: a hashed n-gram logistic-regression classifier, reference corpus vs raw sources,
   keeps a raw document when ``pareto(α) > 1 − score``;
2. ``dedup``: MinHash LSH (datasketch) within and across sources, one document kept per cluster;
3. ``contamination``: 13-gram overlap of training documents with every evaluation set;
then the held-out split and the weighted mixture of ``orchestrator.data.pretrain``.
``pipeline.curate`` runs them in this order, cached by content; ``config`` holds the recipe keys.
"""
