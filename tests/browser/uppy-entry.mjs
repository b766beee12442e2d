// Bundled by uppy.test.mjs with esbuild (format iife) into the page it serves: stock Uppy, nothing of ours.
import Uppy from '@uppy/core';
import AwsS3 from '@uppy/aws-s3';

window.Uppy = Uppy;
window.AwsS3 = AwsS3;
