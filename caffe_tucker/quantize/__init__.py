"""Universal quantization and universal source coding (Choi, El-Khamy & Lee 2018; "Universal Deep
Neural Network Compression", arXiv:1802.02271): the stage after sparsity.

Modules: :mod:`.codebook` (the record every stage shares: a layer's codebook, indices, zero
pattern and dither seed, and its exact decoding), :mod:`.quantizer` (dithered uniform, plain
uniform and k-means quantizers, the step from a target), :mod:`.finetune` (codebook fine-tuning in
real Caffe: each shared value moved by the average gradient of its weights), :mod:`.container`
(the ``.ctz`` file: the net, the codebooks and the entropy-coded indices; ``pack`` / ``unpack``).
"""
