"""Old home of qdbpool.cluster and qdbpool.drivers, kept only until qdbpool/cli/drivers.py
and examples/demo_ha.py import the new names; then this package goes."""
