"""The parts of the single-node SLURM test cluster (tests/slurm_cluster.py, which documents it
and is the one to import): ``system`` (what it needs installed, process helpers), ``files``
(its directory, slurm.conf, gres.conf, fake GPU devices, a snakemake profile), ``daemons``
(munged, slurmctld, slurmd) and ``etc_link`` (the /etc/slurm/slurm.conf symlink)."""
