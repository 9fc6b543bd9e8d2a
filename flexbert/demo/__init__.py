"""`python -m flexbert.demo`: the embedded demo (`run`) and its pretrained-vs-random-init comparison (`compare`)."""
