"""Stage 7, real Caffe: ``process`` (the one place that runs Caffe), ``pycaffe`` + ``worker`` (a
pycaffe interpreter driven over stdin/stdout), ``verify``, ``bench``, ``finetune`` (+ ``train_log``).
"""
