from normcl import require_package_name

require_package_name(__name__, __file__)
