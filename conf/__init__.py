"""bpttlab's Hydra configs, a package so that an installed bpttlab finds them."""
