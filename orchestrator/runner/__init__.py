"""Running a recipe: every phase checked up front, then each started as its own launcher process.

``prepare``   run config → a checked ``PhaseJob`` per phase, and the files it runs with
``process``   start one launcher, tee its log, stop its process group on Ctrl-C
``pipeline``  skip complete phases, run the rest in order, stop on the first failure
"""
