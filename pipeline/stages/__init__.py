"""The stages of the feature graphs as small callable classes, with no Ray in them: ``read``
(list -> decoded pixels; no torch, so reader actors stay small) and ``features`` (decoded
pixels -> stage-1 fit or denoiser -> feature bytes). ``pipeline.distributed`` maps them over
Ray Data actor pools; a plain loop runs them the same."""
