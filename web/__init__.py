"""ecgsearch.web: a small server-rendered viewer that searches a running service like any client would.

Commands and the app import Flask inside functions, so the root CLI's ``--help`` stays light.
"""
