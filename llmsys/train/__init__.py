"""Training: tokenizer, data, pretraining, SFT and the data the bundled model is trained on."""
