# TEMPORARY (not committed): helper's module replaces it
def member_hparams(configs, n_seeds, vectorizable, device):
    first = dict(configs[0])
    for c in configs[1:]:
        for k, v in c.items():
            if first[k] != v:
                raise ValueError(f"{k} cannot vary within one batched model")
    return first
