"""IMDL-BenCo 0.1.45's own code, loaded module by module from its files for equality tests: its
package import pulls its model zoo (timm, torchvision builds that do not match the CPU torch here),
so the package and what its modules import are stood in for. CI unpacks its wheel and sets
SIGMA_FAST_IMDLBENCO; elsewhere the installed package is used, or the test is skipped."""
import importlib.util
import os
import sys
import types

import pytest
import torch


def imdlbenco_folder():
    """The `IMDLBenCo` source folder, or skip (with a printed reason) when there is none."""
    folder = os.environ.get("SIGMA_FAST_IMDLBENCO")
    if folder is None:
        spec = importlib.util.find_spec("IMDLBenCo")
        if spec is None or not spec.submodule_search_locations:
            print("IMDL-BenCo test skipped: IMDLBenCo is not installed and SIGMA_FAST_IMDLBENCO is unset")
            pytest.skip("IMDL-BenCo is not installed (set SIGMA_FAST_IMDLBENCO to its source folder)")
        folder = spec.submodule_search_locations[0]
    return folder


def load_modules(subpackage, names, stand_ins):
    """{name: module} for IMDLBenCo/<subpackage>/<name>.py, executed in order with `stand_ins`
    (module name -> module) in sys.modules, which is restored afterwards."""
    folder = os.path.join(imdlbenco_folder(), subpackage)
    package = types.ModuleType(f"IMDLBenCo.{subpackage}")
    package.__path__ = [folder]
    stand_ins = {"IMDLBenCo": types.ModuleType("IMDLBenCo"), f"IMDLBenCo.{subpackage}": package, **stand_ins}
    qualified = [f"IMDLBenCo.{subpackage}.{name}" for name in names]
    saved = {name: sys.modules.get(name) for name in [*stand_ins, *qualified]}
    sys.modules.update(stand_ins)
    try:
        modules = {}
        for name, module_name in zip(names, qualified):
            spec = importlib.util.spec_from_file_location(module_name, os.path.join(folder, f"{name}.py"))
            modules[name] = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = modules[name]
            spec.loader.exec_module(modules[name])
        return modules
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def imdlbenco_datasets():
    """Its `iml_datasets` module (JsonDataset, ManiDataset); its registry, transforms (albumentations'
    ToTensorV2 at the end) and, when absent, cv2 are stood in for."""
    registry = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
    stand_ins = {"IMDLBenCo.registry": types.SimpleNamespace(DATASETS=registry),
                 "IMDLBenCo.transforms": types.SimpleNamespace(
                     get_albu_transforms=lambda **_: lambda image, masks: {
                         "image": torch.from_numpy(image), "masks": [torch.from_numpy(mask) for mask in masks]},
                     EdgeMaskGenerator=None)}
    if importlib.util.find_spec("cv2") is None:
        stand_ins["cv2"] = types.ModuleType("cv2")
    return load_modules("datasets", ("utils", "abstract_dataset", "iml_datasets"), stand_ins)["iml_datasets"]


def imdlbenco_evaluation():
    """Its evaluation modules {abstract_class, F1, IOU, AUC}; its `misc` and, when absent, sklearn
    (imported at module level, used only in their demos) are stood in for."""
    misc = types.SimpleNamespace(get_world_size=lambda: 1, get_rank=lambda: 0)
    stand_ins = {"IMDLBenCo.training_scripts": types.ModuleType("IMDLBenCo.training_scripts"),
                 "IMDLBenCo.training_scripts.utils": types.SimpleNamespace(misc=misc)}
    if importlib.util.find_spec("sklearn") is None:
        stand_ins["sklearn"] = types.ModuleType("sklearn")
        stand_ins["sklearn.metrics"] = types.SimpleNamespace(f1_score=None, roc_auc_score=None, jaccard_score=None)
    return load_modules("evaluation", ("abstract_class", "F1", "IOU", "AUC"), stand_ins)
