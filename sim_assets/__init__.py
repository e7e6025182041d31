"""The kit's MuJoCo scene files, installed as the package `smolvla_kit.sim_assets`."""
