"""The released SLat latent space's per-channel normalisation (8 channels).

The SLat flow is trained on standardised latents (z - mean) / std and its samples are mapped back
with z * std + mean before decoding; every released SLat-flow config and pipeline.json carries these
same values (docs/reference_facts.md, "SLat normalisation"). A pipeline.json or training config may
override them (the demo measures its own from the latents it encoded).
"""
SLAT_MEAN = (-2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133,
             -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826)
SLAT_STD = (2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695,
            2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338)
