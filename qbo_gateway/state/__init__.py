"""What every concept shares about Redis: the one client factory, the key layout, whether the
backend is reachable right now, named leases, and the one error a backend raises."""
