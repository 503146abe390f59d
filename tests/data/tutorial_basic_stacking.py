# The code cells of the stacking tutorial (../shared/seed/), in order, with
# only the import line changed from ``from astrolab import imaging as im``.
# The notebook export lost the indentation of loop bodies; it is restored.
# tests/test_tutorial.py runs this file in a folder holding synthetic frames
# at ./data/imaging/ring/lights/.

# [1]:
# The following lines are required so that the local ``astrolab`` package can be recognised by Python.
# This is only necessary if you haven't installed the ``astrolab`` package on your machine.
import os
import sys
sys.path.insert(0, os.path.abspath("../../.."))

# [2]:
# Loading the necessary libraries
import numpy as np
import matplotlib.pyplot as plt
from bigstack import imaging as im

# [3]:
lightfiles = im.get_files("./data/imaging/ring/lights/*.fit", print_log=True)

# [4]:
# Trying to naively stack the lights
naive_stack = im.stack_files(lightfiles)
im.display(naive_stack)
plt.show()

# [5]:
# Finding the location of a particular star in all five of the images.
for i in range(len(lightfiles)): # For every light image, find a specfic star in a rough region of space.
    this_image = im.load_image(lightfiles[i])
    this_star = im.find_star(this_image, star_pos=[400, 500], search=200, print_log=True)
    print("Frame ",i,": Star located at pixel", this_star)

# [6]:
# Now that we have found the location of the star in each image, we do the following:
# Using one of the images as a "template" (say, the first one), find out what the displacement
# of the other images are from this image. We do this by seeing how far our detected star has moved between images.
template_image = im.load_image(lightfiles[0])
template_star = im.find_star(template_image, star_pos=[400, 500], search=200, print_log=False)
shifts = np.zeros((len(lightfiles), 2)) # An array to store the coordinates by which to shift each star to align with the first ("template") image
array_of_images = np.zeros((len(lightfiles), len(template_image), len(template_image[0]))) # Array of images, to be sent into the ``stack`` function
for i in range(len(lightfiles)): # For every light image, find a specfic star
    this_image = im.load_image(lightfiles[i])
    this_star = im.find_star(this_image, star_pos=[400, 500], search=200, print_log=False)
    array_of_images[i] = this_image
    shifts[i] = this_star - template_star
print(shifts)

# [7]:
# Stacking the array of images, with the provided shifts
stacked_image = im.stack(array_of_images, shifts=shifts, print_log=True)

# [8]:
im.display(stacked_image, norm_array=template_image)

# [9]:
# Cropping the stacked image, so that the edges don't appear
cropped_stack = im.crop(stacked_image, left=None, right=3100, top=2100, bottom=0, print_log=True)

# [10]:
# Cropping and comparing the "naively stacked" and "shifted and stacked images".
cropped_naive_stack = im.crop(naive_stack, left=None, right=3100, top=2100, bottom=0) # Crop the naively stacked image by the same amount
fig, axes = plt.subplots(nrows=1, ncols=2, figsize=(10,5))
axes[0].set_title("Naively stacked image")
im.display(cropped_naive_stack, fig=fig, ax=axes[0])
axes[1].set_title("Shifted and stacked image")
im.display(cropped_stack, fig=fig, ax=axes[1])
plt.tight_layout()
