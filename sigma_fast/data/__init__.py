"""Data sources: pair manifests and the synthetic edit benchmark (`sigma_fast.data.synth`)."""
