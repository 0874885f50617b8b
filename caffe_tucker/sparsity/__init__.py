"""Joint spatial / Winograd sparsity (Choi, El-Khamy & Lee, 2018): the third system this tool serves.

Stages, one module each: :mod:`.winograd` (the Winograd algebra F(m x m, 3 x 3) and the multiply
counts), :mod:`.winograd_form` (a stride-1 3x3 convolution rewritten as three stock Caffe layers that
compute it the Winograd way), :mod:`.regularizer` (the partial-L2 penalties in both domains and their
learnable coefficients), :mod:`.prune` (magnitude masks in each domain), :mod:`.data` (training and
test arrays, accuracy and PSNR), :mod:`.train_net` (the train net and solver built from a deploy
net), :mod:`.schedule` (regularized training -> prune -> fine-tune with masks, driven in real
Caffe), :mod:`.record` (the report) and :mod:`.outputs` (the output directory).
"""
