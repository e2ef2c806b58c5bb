"""Names used across tal_tf, defined once.

`SequenceExampleFields` are the keys of the serialized `tf.train.SequenceExample`
(DESIGN.md contract). `InputFields` are the keys of the decoded / batched tensors the input
pipeline hands to a meta-architecture. `DetectionFields` are the keys of postprocessed
outputs (also the exported serving signature's output names).
"""


class SequenceExampleFields:
  """Keys of the on-disk SequenceExample."""
  video_id = "video/id"                    # bytes
  duration = "video/duration"              # float, seconds
  feature_fps = "video/feature_fps"        # float, feature steps per second
  num_steps = "video/num_steps"            # int64, T
  segment_start = "segment/start"          # float list, seconds
  segment_end = "segment/end"              # float list, seconds
  segment_label = "segment/label"          # int64 list, label-map ids (>= 1)
  segment_label_text = "segment/label_text"  # bytes list
  video_labels = "video/labels"            # int64 list, video-level ids (weak supervision)
  feature_prefix = "features/"             # feature list per stream: features/<stream>
  # Frame records (dataset_tools/create_frame_records.py) carry the same context, with
  # feature_fps = frames per second and num_steps = frames in the record, plus:
  frames_jpeg = "frames/jpeg"              # feature list: one JPEG (bytes) per frame
  frame_height = "video/frame_height"      # int64, pixels of the stored frames
  frame_width = "video/frame_width"        # int64
  first_frame = "video/first_frame"        # int64, index of the record's first frame
  num_frames = "video/num_frames"          # int64, frames of the whole video (a long video
                                           # is split into several consecutive records)

  @staticmethod
  def feature_key(stream):
    """Feature-list key of a stream, e.g. 'rgb' -> 'features/rgb'."""
    return SequenceExampleFields.feature_prefix + stream


class InputFields:
  """Keys of decoded (and batched) input tensors.

  Batched shapes: features [B, T, D_stream] per stream (zero padded), num_steps [B],
  segments [B, G, 2] in feature steps, segments_seconds [B, G, 2], labels [B, G] (ids, 0 pad),
  num_segments [B], video_labels [B, C] multi-hot (class id k -> column k-1).
  """
  video_id = "video_id"
  duration = "duration"
  feature_fps = "feature_fps"
  num_steps = "num_steps"
  features = "features"                    # dict stream -> [B, T, D]
  segments = "groundtruth_segments"        # [B, G, 2] (start, end) in feature steps
  segments_seconds = "groundtruth_segments_seconds"  # [B, G, 2] in seconds
  labels = "groundtruth_labels"            # [B, G] int32 label-map ids, padded with 0
  num_segments = "num_groundtruth_segments"  # [B]
  video_labels = "video_labels"            # [B, num_classes] float multi-hot
  window_offset = "window_offset"          # [B] start step of the crop in the full video


class DetectionFields:
  """Keys of postprocessed detections (and the serving signature's outputs)."""
  detection_segments = "detection_segments"  # [B, N, 2] seconds
  detection_scores = "detection_scores"      # [B, N]
  detection_classes = "detection_classes"    # [B, N] label-map ids
  num_detections = "num_detections"          # [B]
  proposal_segments = "proposal_segments"    # [B, P, 2] seconds, class agnostic
  proposal_scores = "proposal_scores"        # [B, P]
  num_proposals = "num_proposals"            # [B]
