"""pneumolens in a department: what connects the model to the systems around it.

The DICOM node and its objects (``dicom_node``, ``dicom_report``, ``dicom_presentation``,
``dicom_segmentation``), its query/retrieve service (``dicom_qr``), pulls from a PACS
(``dicom_pull``, ``dicomweb_pull``), DICOMweb in and out (``dicomweb_service``,
``dicomweb_results``, ``dicomweb_pixels``, ``stow_outbox``), results for an EHR or a RIS (``fhir``,
``hl7v2``) sent from store-and-forward outboxes (``outbox``, ``fhir_outbox``, ``hl7_outbox``,
``send_on``, ``smart_auth``, ``credentials``), the RIS's orders they are filed under
(``hl7_orders``), and the watch folder (``watch``). Guide:
docs/clinical-integration.md.
"""
