"""Raw CITE-seq counts into one preprocessed MuData: input checks (``validation``, ``counts``,
``annotations``), block-wise reading of sparse matrices (``blocks``) and scanpy's batch-aware
selection of highly variable genes computed a site at a time (``hvg``). The data_processing
pipeline's nodes call these."""
