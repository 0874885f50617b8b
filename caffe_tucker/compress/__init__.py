"""Stage 3-6, compress: ``plan`` (which layers, which method) → ``ranks`` (VBMF, ``vbmf``) →
``decompose`` (with a method of ``methods``, TensorLy through ``tensorly_wrapper``) → ``rewrite``
(the new layers) → ``record`` (what was done) and ``finetune_files`` (train_val, solver);
``convert`` runs them all, ``reproduce`` compares with the paper's tables.
"""
