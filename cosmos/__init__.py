"""Cosmos: the package service (DC/OS' Cosmos API) over package repositories and Marathon."""
