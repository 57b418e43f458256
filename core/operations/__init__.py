"""What operators and the product team run beside serving: admin actions, monitoring, rollouts
of a new generator, recalls."""
