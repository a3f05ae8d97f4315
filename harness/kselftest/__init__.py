"""The kernel's own iommufd and VFIO selftests, built per arch and run in harness guests.

``build`` compiles them statically from the guest kernel's source (cached), ``tap``
parses their TAP/KTAP output, ``runner`` runs them in one guest per vIOMMU configuration
(``matrix``), ``expected`` judges each result against ``expected.toml``, and ``junit`` /
``report`` write JUnit XML, the verdict and a results document.
"""
