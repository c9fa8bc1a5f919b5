"""FER2013 from Kaggle, through kagglehub: the competition's own fer2013.csv, or the public image-folder release
converted to the same CSV.

    python download.py [--dest data/] [--source auto|competition|folders|OWNER/DATASET]
"""
import argparse
import os
import shutil
import sys
import tarfile

from common import UserError, exit_on_user_error, replaced_atomically
from data import read_folders
from fer2013 import FER2013_URL
from kaggle_csv import write_csv


COMPETITION = "challenges-in-representation-learning-facial-expression-recognition-challenge"
FOLDER_RELEASE = "msambare/fer2013"  # the public image-folder release on Kaggle


def download(dest="data", source="auto"):
    """Put FER2013 at dest/fer2013.csv through kagglehub.

    source "competition": the competition's own fer2013.csv (needs Kaggle credentials, KAGGLE_USERNAME and
    KAGGLE_KEY or ~/.kaggle/kaggle.json, and the competition's rules accepted on its page). "folders", or any
    Kaggle dataset handle: the image-folder release, converted to the Kaggle CSV (its Usage blocks sorted by
    file name, having no row order of their own). "auto": the competition when credentials are set, else the
    folders. Nothing is downloaded when dest/fer2013.csv exists already.
    """
    target = os.path.join(dest, "fer2013.csv")
    if os.path.exists(target):
        print(f"{target} is there already; delete it to download again")
        return target
    try:
        import kagglehub
        from kagglehub.config import get_kaggle_credentials
    except ImportError:
        raise UserError("the download needs kagglehub: pip install -r requirements-dev.txt (or pip install "
                        "kagglehub)") from None
    if source == "auto":
        source = "competition" if get_kaggle_credentials() else "folders"
    handle = FOLDER_RELEASE if source == "folders" else source
    try:
        if source == "competition":
            found = _competition_csv(kagglehub.competition_download(COMPETITION), dest)
            os.makedirs(dest, exist_ok=True)
            with replaced_atomically(target) as temporary:
                shutil.copyfile(found, temporary)
        else:
            faces = read_folders(_release_root(kagglehub.dataset_download(handle)))
            write_csv(target, faces)
    except UserError:
        raise
    except Exception as error:  # kagglehub raises requests', its own and OS errors alike
        raise UserError(f"could not download {'the competition files' if source == 'competition' else handle}: "
                        f"{_download_problem(error)}; or download fer2013.csv by hand from {FER2013_URL} and put it "
                        f"at {target}") from None
    print(f"wrote {target} ({'the competition file' if source == 'competition' else handle + ', converted'})")
    return target


def _download_problem(error):
    import requests
    from kagglehub.exceptions import UnauthenticatedError

    if isinstance(error, requests.exceptions.ConnectionError):
        return "cannot reach Kaggle (offline?)"
    if isinstance(error, UnauthenticatedError):
        return ("Kaggle credentials are needed (KAGGLE_USERNAME and KAGGLE_KEY, or ~/.kaggle/kaggle.json), "
                "with the competition's rules accepted on its page")
    text = " ".join(str(error).split()) or error.__class__.__name__
    return text[:300] + ("..." if len(text) > 300 else "")


def _competition_csv(path, dest):
    """fer2013.csv from the competition files: as it is, inside fer2013.tar.gz, or as icml_face_data.csv."""
    for folder, _, files in os.walk(path):
        if "fer2013.csv" in files:
            return os.path.join(folder, "fer2013.csv")
    for folder, _, files in os.walk(path):
        if "fer2013.tar.gz" in files:
            with tarfile.open(os.path.join(folder, "fer2013.tar.gz")) as archive:
                member = next((m for m in archive.getmembers() if m.name.endswith("fer2013.csv")), None)
                if member is not None:
                    os.makedirs(dest, exist_ok=True)
                    extracted = os.path.join(dest, "fer2013.extracting.csv")
                    with archive.extractfile(member) as source, open(extracted, "wb") as out:
                        shutil.copyfileobj(source, out)
                    return extracted
        if "icml_face_data.csv" in files:
            return os.path.join(folder, "icml_face_data.csv")
    raise UserError(f"{path}: the competition files hold no fer2013.csv")


def _release_root(path):
    for folder, subfolders, _ in os.walk(path):
        if "train" in subfolders and "test" in subfolders:
            return folder
    raise UserError(f"{path}: no train/ and test/ folders in the downloaded release")


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description="Fetch FER2013 from Kaggle into DEST/fer2013.csv (kagglehub).")
    parser.add_argument("--dest", default="data", help="the folder (default data/)")
    parser.add_argument("--source", default="auto",
                        help="auto, competition, folders, or a Kaggle dataset handle (default auto)")
    args = parser.parse_args(argv)
    download(args.dest, args.source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
