from setuptools import setup

# Everything lives in setup.cfg; twisted/plugins is listed there explicitly because it
# must stay a namespace portion (no __init__.py) of Twisted's own plugin package.
setup()
