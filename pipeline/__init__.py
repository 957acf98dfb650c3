"""The science: datasets, models, training and scores. Pure Python + torch; never imports datajoint."""
